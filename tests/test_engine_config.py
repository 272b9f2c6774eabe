"""PytorchEngineConfig with the FOCUS fields: validation and the channel to the engine."""
import copy
import dataclasses
import logging
import pickle

import pytest

import lmdeploy
from lmdeploy.messages import PytorchEngineConfig
from lmdeploy_focus.config.options import OPTIONS_KEY, FocusOptions


def test_upstream_names_resolve_to_the_focus_config():
    assert lmdeploy.PytorchEngineConfig is PytorchEngineConfig
    assert PytorchEngineConfig.__module__ == 'lmdeploy_focus.config.engine_config'


def test_defaults_are_stock_behaviour():
    cfg = PytorchEngineConfig()
    assert (cfg.dllm_enable_delayed_cache, cfg.dllm_enable_focus, cfg.dllm_focus_alpha, cfg.dllm_track) == \
        (False, False, 1.5, False)
    assert cfg.hf_overrides is None
    assert PytorchEngineConfig(hf_overrides={'x': 1}).hf_overrides == {'x': 1}


@pytest.mark.parametrize('alpha', [0.5, 0.999, -1.0, 0.0])
def test_alpha_below_one_names_the_parameter(alpha):
    with pytest.raises(ValueError, match='dllm_focus_alpha'):
        PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=alpha)


@pytest.mark.parametrize('alpha', [None, 'x', float('nan'), float('inf'), True])
def test_alpha_must_be_a_finite_number(alpha):
    with pytest.raises(ValueError, match='dllm_focus_alpha'):
        PytorchEngineConfig(dllm_focus_alpha=alpha)


def test_focus_enables_delayed_cache_and_logs_it_once_per_process(focus_logs, monkeypatch):
    import lmdeploy_focus.log
    monkeypatch.setattr(lmdeploy_focus.log, '_logged_once', set())  # as in a fresh process
    cfg = PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=2)
    assert cfg.focus_options().enable_delayed_cache is True and cfg.dllm_enable_delayed_cache is False  # as given
    assert cfg.dllm_focus_alpha == 2.0
    note = 'dllm_enable_focus=True enables dllm_enable_delayed_cache.'
    assert focus_logs.messages(logging.INFO).count(note) == 1
    assert cfg.hf_overrides[OPTIONS_KEY] == dict(enable_delayed_cache=True, enable_focus=True, focus_alpha=2.0,
                                                 track=False, delayed_cache_commit='exact',
                                                 focus_policy='importance', focus_shadow=False,
                                                 focus_auto_shadow_every=16,
                    focus_auto_target_recall=0.95, focus_auto_alpha_max=4.0, focus_auto_margin=0.05,
                    stock_step_rows=64)
    # pipelines, chat and benchmarks build configs again and again: the note stays at one INFO line
    for _ in range(3):
        PytorchEngineConfig(dllm_enable_focus=True)
    assert focus_logs.messages(logging.INFO).count(note) == 1
    assert focus_logs.messages(logging.DEBUG).count(note) == 4


@pytest.mark.parametrize('kwargs, fix', [
    (dict(quant_policy=8), 'quant_policy=0'),
    (dict(quant_policy=4), 'quant_policy=0'),
    (dict(tp=2), 'tp=1'),
    (dict(dp=2), r'set dp=1 and ep=1'),
    (dict(ep=2), r'set dp=1 and ep=1'),
    (dict(dllm_block_length=128), r'block_size=128 \(--cache-block-seq-len 128\)'),
    (dict(dllm_block_length=48), r'must be a power of two: use dllm_block_length=32 or 64'),
    (dict(dllm_block_length=24, block_size=32), r'use dllm_block_length=16 or 32'),
    (dict(dllm_block_length=32, block_size=16, kernel_block_size=16), r'block_size=32 \(--cache-block-seq-len 32\)'),
])
@pytest.mark.parametrize('flag', ['dllm_enable_focus', 'dllm_enable_delayed_cache'])
def test_unsupported_combinations_fail_at_config_time_with_the_fix(kwargs, fix, flag):
    with pytest.raises(ValueError, match=fix):
        PytorchEngineConfig(**{flag: True}, **kwargs)
    # The same settings are fine for stock decoding.
    PytorchEngineConfig(**kwargs)


def test_the_advised_fix_for_a_block_length_is_accepted():
    # dllm_block_length=48 with the default page: the error must not advise block_size=48 (upstream
    # rejects a page that is not a power of two); what it advises must construct.
    with pytest.raises(ValueError) as error:
        PytorchEngineConfig(dllm_enable_focus=True, dllm_block_length=48)
    assert 'block_size=48' not in str(error.value) and '\n' not in str(error.value)
    for fix in (32, 64):
        PytorchEngineConfig(dllm_enable_focus=True, dllm_block_length=fix)
    with pytest.raises(ValueError, match=r'block_size=128') as error:
        PytorchEngineConfig(dllm_enable_focus=True, dllm_block_length=128)
    PytorchEngineConfig(dllm_enable_focus=True, dllm_block_length=128, block_size=128)


@pytest.mark.parametrize('block_length', [0, -32, -1, 2.5, True, '32'])
@pytest.mark.parametrize('flags', [{}, dict(dllm_enable_focus=True), dict(dllm_enable_delayed_cache=True)])
def test_block_length_must_be_a_positive_integer(block_length, flags):
    # 0 was a ZeroDivisionError with FOCUS (and in upstream's engine builder without), -32 passed silently
    with pytest.raises(ValueError, match=r'^dllm_block_length must be a positive integer, got .*--dllm-block-length'):
        PytorchEngineConfig(dllm_block_length=block_length, **flags)


@pytest.mark.parametrize('field, value, fix', [
    ('dllm_denoising_steps', 0, '--dllm-denoising-steps 8'), ('dllm_denoising_steps', -4, '--dllm-denoising-steps 8'),
    ('dllm_denoising_steps', 2.5, '--dllm-denoising-steps 8'), ('dllm_denoising_steps', True, '--dllm-denoising-steps 8'),
    ('dllm_confidence_threshold', float('nan'), '--dllm-confidence-threshold 0.9'),
    ('dllm_confidence_threshold', float('inf'), '--dllm-confidence-threshold 0.9'),
    ('dllm_confidence_threshold', 90, '--dllm-confidence-threshold 0.9'),
    ('dllm_confidence_threshold', -0.1, '--dllm-confidence-threshold 0.9'),
    ('dllm_confidence_threshold', '0.9', '--dllm-confidence-threshold 0.9'),
])
def test_unmasking_settings_that_would_kill_or_hang_the_engine_are_refused(field, value, fix):
    # denoising steps 0: ZeroDivisionError in upstream's unmasker at the first decode step (the engine loop
    # dies); threshold NaN: nothing is ever unmasked (every request hangs)
    with pytest.raises(ValueError, match=rf'^{field} must be .*{fix}'):
        PytorchEngineConfig(**{field: value})


def test_unmasking_settings_are_checked_again_where_the_engine_builds_its_strategies():
    # lmdeploy chat sets parsed options on a default config after construction; the factory sees them
    from lmdeploy.pytorch.config import DLLMConfig

    from lmdeploy_focus.strategies.dllm.factory import FocusDLLMStrategyFactory
    for bad in (dict(denoising_steps=0), dict(confidence_threshold=float('nan'))):
        with pytest.raises(ValueError, match='^dllm_(denoising_steps|confidence_threshold) must be'):
            FocusDLLMStrategyFactory(model_config=None, dllm_config=DLLMConfig(block_length=32, **bad))
    # lmdeploy chat --dllm-block-length 0: upstream's engine strategy divides by it once requests are scheduled
    for block_length in (0, -32):
        with pytest.raises(ValueError, match='^dllm_block_length must be a positive integer'):
            FocusDLLMStrategyFactory(model_config=None, dllm_config=DLLMConfig(block_length=block_length))
    for good in (dict(denoising_steps=None), dict(denoising_steps=64, confidence_threshold=0.0),
                 dict(confidence_threshold=1.0)):
        PytorchEngineConfig(**{f'dllm_{k}': v for k, v in good.items()})


@pytest.mark.parametrize('block_length, page', [(16, 64), (32, 64), (64, 64), (32, 32), (4, 64), (128, 128)])
def test_supported_block_and_page_combinations(block_length, page):
    cfg = PytorchEngineConfig(dllm_enable_focus=True, dllm_block_length=block_length, block_size=page)
    assert cfg.hf_overrides[OPTIONS_KEY]['enable_focus'] is True


def test_fields_set_after_construction_reach_the_engine_channel():
    # lmdeploy chat's build_pipe builds a default config and setattr()s parsed options onto it.
    cfg = PytorchEngineConfig(hf_overrides={'rope_theta': 5.0})
    cfg.dllm_enable_focus = True
    cfg.dllm_focus_alpha = 3.0
    assert cfg.hf_overrides == {'rope_theta': 5.0, OPTIONS_KEY: FocusOptions(True, True, 3.0, False).to_dict()}
    cfg.dllm_focus_alpha = 0.5
    with pytest.raises(ValueError, match='dllm_focus_alpha'):
        cfg.hf_overrides


def test_commit_mode_is_validated_and_carried():
    cfg = PytorchEngineConfig(dllm_enable_delayed_cache=True, dllm_delayed_cache_commit='fast')
    assert cfg.hf_overrides[OPTIONS_KEY]['delayed_cache_commit'] == 'fast'
    with pytest.raises(ValueError, match='dllm_delayed_cache_commit'):
        PytorchEngineConfig(dllm_enable_delayed_cache=True, dllm_delayed_cache_commit='lazy')


def test_options_given_through_hf_overrides_are_adopted():
    cfg = PytorchEngineConfig(hf_overrides={OPTIONS_KEY: {'enable_focus': True, 'focus_alpha': 2.5}, 'a': 1})
    assert cfg.dllm_enable_focus and cfg.focus_options().enable_delayed_cache and cfg.dllm_focus_alpha == 2.5
    assert cfg.hf_overrides['a'] == 1


def test_conflicting_and_unknown_carried_options_are_errors():
    with pytest.raises(ValueError, match='conflicts'):
        PytorchEngineConfig(dllm_focus_alpha=2.0, hf_overrides={OPTIONS_KEY: {'focus_alpha': 3.0}})
    with pytest.raises(ValueError, match='unknown FOCUS option'):
        PytorchEngineConfig(hf_overrides={OPTIONS_KEY: {'alpha': 3.0}})
    with pytest.raises(ValueError, match='must be a dict'):
        PytorchEngineConfig(hf_overrides={OPTIONS_KEY: 'focus'})


def test_config_survives_pickle_deepcopy_and_replace():
    cfg = PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=1.75, dllm_track=True,
                              hf_overrides={'k': [1, 2]})
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), dataclasses.replace(cfg, session_len=99)):
        assert type(clone) is PytorchEngineConfig
        assert clone.hf_overrides == cfg.hf_overrides
        assert clone.focus_options() == cfg.focus_options()


def test_options_reach_the_engine_model_config(sdar_dir):
    """Front end -> MiscConfig -> ModelConfig.hf_config, exactly as the engine process builds them."""
    from lmdeploy.pytorch.config import MiscConfig, ModelConfig
    cfg = PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=2.0, dllm_track=True,
                              hf_overrides={'rms_norm_eps': 1e-5})
    misc = MiscConfig.from_engine_config(cfg)
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-tiny-b16'), hf_overrides=misc.hf_overrides)
    assert FocusOptions.from_hf_config(model_config.hf_config) == FocusOptions(True, True, 2.0, True)
    assert model_config.hf_config.rms_norm_eps == 1e-5


def test_focus_policy_and_shadow_options():
    cfg = PytorchEngineConfig(dllm_focus_shadow=True, dllm_focus_policy='leftmost')
    assert cfg.focus_options().enable_focus and cfg.focus_options().enable_delayed_cache
    options = cfg.hf_overrides[OPTIONS_KEY]
    assert (options['focus_policy'], options['focus_shadow'], options['enable_focus']) == ('leftmost', True, True)
    with pytest.raises(ValueError, match='dllm_focus_policy'):
        PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_policy='random')


def test_prefix_caching_with_fast_commit_is_refused():
    with pytest.raises(ValueError, match="dllm_delayed_cache_commit='exact'"):
        PytorchEngineConfig(dllm_enable_delayed_cache=True, dllm_delayed_cache_commit='fast', enable_prefix_caching=True)
    cfg = PytorchEngineConfig(dllm_enable_delayed_cache=True, enable_prefix_caching=True)  # exact: allowed
    assert cfg.hf_overrides[OPTIONS_KEY]['delayed_cache_commit'] == 'exact'


@pytest.mark.parametrize('strategy', [None, 'foo', 3])
def test_an_unknown_unmasking_strategy_is_refused_with_the_config(strategy):
    """Upstream reads it only when the engine builds (None was an AttributeError there). Found by a bug-hunting
    review."""
    with pytest.raises(ValueError, match='^dllm_unmasking_strategy must be one of sequential, low_confidence_dynamic, '
                                         'low_confidence_static, got'):
        PytorchEngineConfig(dllm_unmasking_strategy=strategy)
    for name in ('sequential', 'LOW_CONFIDENCE_STATIC', 'low_confidence_dynamic'):  # upstream's reading: any case
        assert PytorchEngineConfig(dllm_unmasking_strategy=name).dllm_unmasking_strategy == name


def test_sequential_unmasking_with_focus_importance_is_refused_naming_leftmost():
    """Importance may evict the leftmost masked slots; the unmasker sees evicted slots as done, so sequential
    unmasking decoded to their right, out of order (found by a bug-hunting review). Leftmost, shadow mode and the
    other strategies are accepted."""
    with pytest.raises(ValueError, match='use --dllm-focus-policy leftmost with --dllm-unmasking-strategy sequential'):
        PytorchEngineConfig(dllm_enable_focus=True, dllm_unmasking_strategy='sequential')
    PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_policy='leftmost', dllm_unmasking_strategy='sequential')
    PytorchEngineConfig(dllm_focus_shadow=True, dllm_unmasking_strategy='sequential')
    PytorchEngineConfig(dllm_enable_delayed_cache=True, dllm_unmasking_strategy='sequential')
    PytorchEngineConfig(dllm_enable_focus=True, dllm_unmasking_strategy='low_confidence_static')


def test_another_configs_focus_overrides_without_its_fields_warn_that_they_are_not_used(focus_logs, monkeypatch):
    """``PytorchEngineConfig(hf_overrides=a.hf_overrides)`` shows FOCUS in the dict it is given, yet runs stock (the
    fields decide, so that ``replace(a, dllm_focus_alpha=3.0)`` works): said once, as a warning (found by a review)."""
    import dataclasses

    from lmdeploy_focus import log
    monkeypatch.setattr(log, '_logged_once', set())  # once per process: this test's process may have said it
    a = PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=3.0)
    b = PytorchEngineConfig(hf_overrides=a.hf_overrides)
    assert not b.focus_options().enable_focus
    (warning, ) = [m for m in focus_logs.messages(logging.WARNING) if 'taken from another engine config' in m]
    assert "dllm_* fields decide, and they leave FOCUS off (to carry FOCUS over, pass the other config's" in warning
    c = dataclasses.replace(a, dllm_focus_alpha=2.0)  # the fields given with it decide, nothing to warn about
    assert c.focus_options().focus_alpha == 2.0
    assert [m for m in focus_logs.messages(logging.WARNING) if 'taken from another engine config' in m] == [warning]


@pytest.mark.parametrize('given, change, runs', [
    (dict(dllm_focus_shadow=True), dict(dllm_focus_shadow=False), (False, False, False)),  # stock, not eviction
    (dict(dllm_enable_focus=True), dict(dllm_enable_focus=False), (False, False, False)),  # stock, not delayed cache
    (dict(dllm_enable_focus=True), dict(dllm_focus_shadow=True), (True, True, True)),
    (dict(dllm_enable_delayed_cache=True, dllm_enable_focus=True), dict(dllm_enable_focus=False), (True, False, False)),
])
def test_replace_turns_off_what_it_turns_off(given, change, runs):
    """__post_init__ wrote the switches a flag implies into the fields, so dataclasses.replace handed them back as
    given: replace(shadow, dllm_focus_shadow=False) ran eviction, replace(focus, dllm_enable_focus=False) ran delayed
    cache instead of stock."""
    derived = dataclasses.replace(PytorchEngineConfig(**given), **change)
    options = derived.focus_options()
    assert (options.enable_delayed_cache, options.enable_focus, options.focus_shadow) == runs
    assert (derived.hf_overrides or {}).get(OPTIONS_KEY, {}).get('enable_focus', False) == runs[1]


def test_shadow_mode_with_auto_alpha_is_refused():
    """Accepted before: auto's one-in-N shadow steps replaced shadow mode's every-step recall counts, and its
    fall-back counter grew on /metrics in a mode that never evicts (a statistics hunt)."""
    with pytest.raises(ValueError, match='dllm_focus_shadow evicts nothing, so dllm_focus_alpha auto'):
        PytorchEngineConfig(dllm_focus_shadow=True, dllm_focus_alpha='auto')
    with pytest.raises(ValueError, match='dllm_focus_alpha auto has nothing to tune'):
        FocusOptions.from_dict({'focus_shadow': True, 'focus_alpha': 'auto'})
    assert PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha='auto').focus_options().auto_alpha
