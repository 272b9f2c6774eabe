"""FOCUS options given both as flags / engine fields and as ``hf_overrides['dllm_focus']`` are merged: each
source may set options, and only the same option set to two different values is refused."""
import argparse

import pytest

from lmdeploy_focus.cli.flags import fold_into_hf_overrides
from lmdeploy_focus.config.options import OPTIONS, OPTIONS_KEY


def _args(hf_overrides=None, **flags):
    values = {option.field: option.default for option in OPTIONS}
    values.update({f'dllm_{name}': value for name, value in flags.items()})
    return argparse.Namespace(hf_overrides=hf_overrides, **values)


def test_flag_and_hf_overrides_options_are_merged():
    args = _args({'rms_norm_eps': 1e-5, OPTIONS_KEY: {'focus_alpha': 'auto', 'focus_policy': 'leftmost'}},
                 enable_focus=True)
    fold_into_hf_overrides(args)
    options = args.hf_overrides[OPTIONS_KEY]
    assert (options['enable_focus'], options['enable_delayed_cache']) == (True, True)
    assert (options['focus_alpha'], options['focus_policy']) == ('auto', 'leftmost')
    assert args.hf_overrides['rms_norm_eps'] == 1e-5


def test_an_hf_overrides_switch_survives_an_unrelated_flag():
    args = _args({OPTIONS_KEY: {'enable_focus': True}}, track=True)
    fold_into_hf_overrides(args)
    options = args.hf_overrides[OPTIONS_KEY]
    assert (options['enable_focus'], options['track']) == (True, True)


def test_the_same_option_with_two_values_is_refused_naming_both():
    args = _args({OPTIONS_KEY: {'focus_alpha': 3.0}}, enable_focus=True, focus_alpha=2.0)
    with pytest.raises(ValueError, match=r"--dllm-focus-alpha 2\.0 conflicts with --hf-overrides dllm_focus\.focus_alpha=3\.0"):
        fold_into_hf_overrides(args)


def test_the_same_value_in_both_places_is_accepted():
    args = _args({OPTIONS_KEY: {'focus_alpha': 2.0}}, enable_focus=True, focus_alpha=2.0)
    fold_into_hf_overrides(args)
    assert args.hf_overrides[OPTIONS_KEY]['focus_alpha'] == 2.0


def test_no_options_anywhere_leaves_hf_overrides_alone():
    args = _args({'rms_norm_eps': 1e-5})
    fold_into_hf_overrides(args)
    assert args.hf_overrides == {'rms_norm_eps': 1e-5}


def test_engine_config_merges_a_partial_hf_overrides_dict_with_its_fields():
    from lmdeploy import PytorchEngineConfig
    config = PytorchEngineConfig(dllm_enable_focus=True, hf_overrides={OPTIONS_KEY: {'focus_policy': 'leftmost'}})
    assert (config.dllm_enable_focus, config.dllm_focus_policy) == (True, 'leftmost')
    with pytest.raises(ValueError, match=r"dllm_focus_alpha=2\.0 conflicts with hf_overrides\['dllm_focus'\]\['focus_alpha'\]=3\.0"):
        PytorchEngineConfig(dllm_focus_alpha=2.0, hf_overrides={OPTIONS_KEY: {'focus_alpha': 3.0}})


@pytest.mark.parametrize('options, ignored', [
    (dict(focus_policy='leftmost'), ['--dllm-focus-policy (needs --focus)']),
    (dict(focus_alpha='auto'), ['--dllm-focus-alpha (needs --focus)']),
    (dict(delayed_cache_commit='fast'), ['--dllm-delayed-cache-commit (needs --dllm-enable-delayed-cache or --focus)']),
    (dict(enable_focus=True, focus_auto_alpha_max=3.0), ['--dllm-focus-auto-alpha-max (needs --focus --dllm-focus-alpha auto)']),
    # read: nothing to say
    (dict(enable_focus=True, focus_policy='leftmost', focus_alpha=2.0, delayed_cache_commit='fast'), []),
    (dict(enable_focus=True, focus_alpha='auto', focus_auto_alpha_max=3.0), []),
    (dict(focus_shadow=True, focus_policy='leftmost'), []),  # shadow implies FOCUS
    (dict(), []),
])
def test_options_a_combination_never_reads_are_named(options, ignored):
    from lmdeploy_focus.config.options import FocusOptions
    assert FocusOptions(**options).resolved().ignored() == ignored


def test_replace_changes_focus_fields_instead_of_conflicting_or_ignoring_them():
    from dataclasses import asdict, replace

    from lmdeploy import PytorchEngineConfig
    config = PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_policy='leftmost', hf_overrides={'rope_theta': 5.0})
    changed = replace(config, dllm_focus_alpha=3.0)
    assert (changed.dllm_focus_alpha, changed.dllm_focus_policy) == (3.0, 'leftmost')
    assert changed.hf_overrides[OPTIONS_KEY]['focus_alpha'] == 3.0 and changed.hf_overrides['rope_theta'] == 5.0
    off = replace(config, dllm_enable_focus=False, dllm_enable_delayed_cache=False, dllm_focus_policy='importance')
    assert not off.dllm_enable_focus and off.hf_overrides == {'rope_theta': 5.0}
    rebuilt = PytorchEngineConfig(**asdict(config))
    assert rebuilt.focus_options() == config.focus_options() and rebuilt.hf_overrides == config.hf_overrides


def test_hf_overrides_set_after_construction_are_merged_and_checked():
    from lmdeploy import PytorchEngineConfig
    config = PytorchEngineConfig(dllm_track=True)
    config.hf_overrides = {OPTIONS_KEY: {'enable_focus': True}, 'rope_theta': 5.0}
    options = config.focus_options()
    assert (options.enable_focus, options.track, options.enable_delayed_cache) == (True, True, True)
    assert config.hf_overrides[OPTIONS_KEY]['enable_focus'] is True and config.hf_overrides['rope_theta'] == 5.0
    with pytest.raises(ValueError, match='conflicts with'):
        config.hf_overrides = {OPTIONS_KEY: {'focus_alpha': 2.0, 'track': False}}
    assert config.dllm_focus_alpha == 1.5 and config.hf_overrides['rope_theta'] == 5.0  # a refused value changed nothing
    quantised = PytorchEngineConfig(quant_policy=8)
    with pytest.raises(ValueError):  # FOCUS with a quantised KV cache is refused, set late or not
        quantised.hf_overrides = {OPTIONS_KEY: {'enable_focus': True}}


def test_a_flag_given_with_its_default_value_still_conflicts_with_hf_overrides():
    """``--dllm-focus-alpha 1.5`` (the default) next to ``--hf-overrides`` α 3.0: the flag was given, so the two
    values conflict (it used to lose silently to the dict, as a flag left out does)."""
    from lmdeploy_focus.cli.flags import add_focus_arguments
    parser = argparse.ArgumentParser()
    parser.add_argument('--hf-overrides', type=eval, default=None)
    add_focus_arguments(parser)
    alpha = next(o for o in OPTIONS if o.name == 'focus_alpha')
    args = parser.parse_args(['--focus', '--dllm-focus-alpha', str(alpha.default),
                              '--hf-overrides', repr({OPTIONS_KEY: {'focus_alpha': 3.0}})])
    with pytest.raises(ValueError, match=rf"--dllm-focus-alpha {alpha.default!r} conflicts with --hf-overrides"):
        fold_into_hf_overrides(args)
    # left out, the dict's value is taken; given with the dict's value, no conflict
    for argv in ([], ['--dllm-focus-alpha', '3.0']):
        args = parser.parse_args(['--focus', *argv, '--hf-overrides', repr({OPTIONS_KEY: {'focus_alpha': 3.0}})])
        fold_into_hf_overrides(args)
        assert args.hf_overrides[OPTIONS_KEY]['focus_alpha'] == 3.0
    # a switch given explicitly parses as before
    args = parser.parse_args(['--dllm-enable-delayed-cache'])
    assert args.dllm_enable_delayed_cache is True and args.dllm_enable_focus is False


def test_options_from_engine_field_names_read_dllm_keys_default_the_rest_and_ignore_others():
    from lmdeploy_focus.config.options import FocusOptions
    options = FocusOptions.from_fields({'dllm_focus_alpha': 2.5, 'dllm_focus_policy': 'leftmost', 'focus_alpha': 9.0,
                                        'max_batch_size': 64})
    assert options.focus_alpha == 2.5 and options.focus_policy == 'leftmost'  # the bare name is not a field name
    untouched = {o.name for o in OPTIONS} - {'focus_alpha', 'focus_policy'}
    assert {name: getattr(options, name) for name in untouched} == {o.name: o.default for o in OPTIONS
                                                                    if o.name in untouched}
    with pytest.raises(ValueError, match='dllm_focus_alpha'):
        FocusOptions.from_fields({'dllm_focus_alpha': 0.5})
