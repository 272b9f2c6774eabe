"""Model facts: SDAR mask token and block length, LLaDA2 recognition, FOCUS flags on AR models."""
import logging

import pytest

from conftest import qwen3_like_config, write_hf_config
from lmdeploy.pytorch.config import DLLMConfig, MiscConfig, ModelConfig
from lmdeploy.pytorch.strategies import build_strategy_factory
from lmdeploy_focus.config.model_facts import block_length_from_path
from lmdeploy_focus.config.options import OPTIONS_KEY
from lmdeploy_focus.strategies.dllm import FocusDLLMStrategyFactory


def test_sdar_mask_token_comes_from_the_checkpoint(sdar_dir):
    cfg = ModelConfig.from_pretrained(sdar_dir('SDAR-a', mask_token_id=77))
    assert cfg.model_paradigm == 'dllm' and cfg.dllm_mask_token == 77


def test_sdar_mask_token_falls_back_to_151669(sdar_dir):
    assert ModelConfig.from_pretrained(sdar_dir('SDAR-b')).dllm_mask_token == 151669


@pytest.mark.parametrize('path, expected', [
    ('/m/SDAR-8B-Chat-b32', 32),
    ('/m/SDAR-8B-Chat-b16/', 16),
    ('SDAR-8B-Chat-b64', 64),
    ('/hub/models--JetLM--SDAR-8B-Chat-b32/snapshots/0123abcd', 32),
    ('/m/SDAR-8B-Chat', None),
    ('/m/b32', None),
    ('/m/SDAR-b0', None),
    (None, None),
    # only the model folder's own name (or a hub cache's repo folder) says the block length
    ('/data/exp-b2/SDAR-8B-Chat', None),
    ('/m/SDAR-8B-Chat-b32/checkpoint-b1000', None),  # a training step, not a block length
    ('/m/SDAR-8B-Chat-b32/snapshots/abc', None),  # not a hub cache (no models-- folder)
    ('/hub/models--JetLM--SDAR-8B-Chat-b16/snapshots/0123abcd/', 16),
])
def test_block_length_from_path(path, expected):
    assert block_length_from_path(path) == expected


def test_block_length_from_a_path_that_names_no_folder(tmp_path, monkeypatch):
    """'.' or '..' from inside / below the model folder, or a symlink to it: the resolved folder's name (these fell
    back to upstream's block length 4); a symlink's own name still counts first."""
    model = tmp_path / 'SDAR-8B-Chat-b32'
    (model / 'sub').mkdir(parents=True)
    monkeypatch.chdir(model)
    assert [block_length_from_path(p) for p in ('.', './', str(model))] == [32, 32, 32]
    monkeypatch.chdir(model / 'sub')
    assert block_length_from_path('..') == 32
    (tmp_path / 'current').symlink_to(model)
    assert block_length_from_path(str(tmp_path / 'current')) == 32
    (tmp_path / 'SDAR-8B-Chat-b16').symlink_to(model)
    assert block_length_from_path(str(tmp_path / 'SDAR-8B-Chat-b16')) == 16  # the name the user gave
    assert block_length_from_path('./missing-b64') == 64  # not a folder here (e.g. a hub id): the text alone


def test_block_length_from_path_is_used_and_logged_when_not_given(sdar_dir, focus_logs):
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-tiny-b16'))
    assert model_config.dllm_block_length == 16
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=None))
    assert factory.dllm_block_length == 16
    assert any('16' in m and 'path' in m for m in focus_logs.messages(logging.INFO))


def test_an_sdar_without_a_block_length_anywhere_says_which_flag_sets_it(sdar_dir, focus_logs):
    """A renamed download (no -b<N>) decoded at upstream's fallback of 4 with only upstream's note."""
    model_config = ModelConfig.from_pretrained(sdar_dir('sdar'))
    assert model_config.dllm_block_length is None
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=None))
    warned = [m for m in focus_logs.messages(logging.WARNING) if 'dllm_block_length' in m]
    assert len(warned) == 1 and f'fallback {factory.dllm_block_length}' in warned[0]
    assert '--dllm-block-length N' in warned[0]


def test_explicit_block_length_wins_over_path_with_a_warning(sdar_dir, focus_logs):
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-tiny-b16'))
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=32, denoising_steps=None))
    assert factory.dllm_block_length == 32 and model_config.dllm_block_length == 32
    assert any('dllm_block_length=32 differs from the model\'s 16' in m for m in focus_logs.messages(logging.WARNING))
    # the same length as the model's: no warning
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-tiny2-b16'))
    before = len(focus_logs.messages(logging.WARNING))
    FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=16, denoising_steps=None))
    assert len(focus_logs.messages(logging.WARNING)) == before


def test_llada2_is_recognised_as_a_dllm(tmp_path):
    path = write_hf_config(tmp_path / 'LLaDA2.0-mini',
                           **qwen3_like_config(architectures=['LLaDA2MoeModelLM'], model_type='llada2_moe'))
    cfg = ModelConfig.from_pretrained(path)
    assert (cfg.model_paradigm, cfg.dllm_mask_token, cfg.dllm_block_length) == ('dllm', 156895, 32)


def test_engine_process_builds_the_focus_factory(sdar_dir):
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-c'))
    factory = build_strategy_factory(model_config, MiscConfig(dllm_config=DLLMConfig(block_length=32)))
    assert type(factory) is FocusDLLMStrategyFactory
    assert factory.focus_options.is_default


def test_focus_flags_on_an_ar_model_warn_and_are_ignored(tmp_path, focus_logs):
    path = write_hf_config(tmp_path / 'Qwen3-tiny',
                           **qwen3_like_config(architectures=['Qwen3ForCausalLM'], model_type='qwen3'))
    cfg = ModelConfig.from_pretrained(path, hf_overrides={OPTIONS_KEY: {'enable_focus': True}})
    assert cfg.model_paradigm == 'ar'
    assert getattr(cfg.hf_config, OPTIONS_KEY) is None
    assert any('ignored' in m and 'Qwen3ForCausalLM' in m for m in focus_logs.messages(logging.WARNING))


def test_focus_builds_the_runtime_with_its_options(sdar_dir):
    from lmdeploy_focus.models.step_state.focus_step import FocusConfig
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-d'),
                                               hf_overrides={OPTIONS_KEY: {'enable_focus': True, 'focus_alpha': 2.0,
                                                                           'focus_policy': 'leftmost'}})
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=32))
    assert factory.delayed_cache_runtime.focus == FocusConfig(alpha=2.0, policy='leftmost', shadow=False)
    assert factory.run_stats is None
    assert factory.build_step_inputs().tracks_focus  # FOCUS on: its per-sequence state is kept


def test_delayed_cache_builds_the_delayed_cache_strategies(sdar_dir):
    from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
    from lmdeploy_focus.strategies.dllm.delayed_cache_step_inputs import DelayedCacheStepInputs
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-f'),
                                               hf_overrides={OPTIONS_KEY: {'enable_delayed_cache': True,
                                                                           'delayed_cache_commit': 'fast'}})
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=16))
    step_inputs = factory.build_step_inputs()
    agent = factory.build_model_agent_strategy()
    assert isinstance(step_inputs, DelayedCacheStepInputs) and isinstance(agent, DelayedCacheAgentStrategy)
    runtime = factory.delayed_cache_runtime
    assert runtime.step_inputs is step_inputs and agent.runtime is runtime
    assert (runtime.block_length, runtime.commit_mode) == (16, 'fast')
    assert not step_inputs.tracks_focus  # FOCUS off: no FOCUS state kept per step


def test_track_alone_builds_the_tracking_agent(sdar_dir):
    from lmdeploy_focus.strategies.dllm.tracking_agent import TrackingDLLMAgentStrategy
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-e'), hf_overrides={OPTIONS_KEY: {'track': True}})
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=32))
    agent = factory.build_model_agent_strategy()
    assert isinstance(agent, TrackingDLLMAgentStrategy) and agent.stats is factory.run_stats
    assert factory.delayed_cache_runtime is None


@pytest.mark.parametrize('options', [{}, {'track': True}, {'enable_delayed_cache': True}, {'enable_focus': True}])
def test_every_arm_gets_the_fixed_sampling_and_sequence_strategies(sdar_dir, options):
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMSamplingStrategy, FixedDLLMSequenceStrategy
    model_config = ModelConfig.from_pretrained(sdar_dir('SDAR-g'), hf_overrides={OPTIONS_KEY: options})
    factory = FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=16))
    sampling = factory.build_sampling_strategy()
    assert isinstance(sampling, FixedDLLMSamplingStrategy) and sampling.dllm_block_length == 16
    sequence = factory.build_sequence_strategy()
    assert isinstance(sequence, FixedDLLMSequenceStrategy) and sequence.block_size == 16
    from dataclasses import fields

    from lmdeploy.pytorch.strategies.dllm import DLLMStrategyFactory
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMStepInputs
    step_inputs = factory.build_step_inputs()
    assert isinstance(step_inputs, FixedDLLMStepInputs)
    # contract: upstream builds nothing but these two fields (else our builder drops upstream state)
    upstream = DLLMStrategyFactory.build_step_inputs(factory)
    assert {f.name: getattr(step_inputs, f.name) for f in fields(upstream)} == \
        {f.name: getattr(upstream, f.name) for f in fields(upstream)}


def test_sdar_config_without_remote_code_gets_rope_parameters(tmp_path):
    """transformers 5 loads config.json without --trust-remote-code as a generic config that drops
    rope_parameters; LMDeploy's SDAR rotary embedding reads it."""
    from lmdeploy.pytorch.nn.rotary_embedding import get_rope_theta
    cfg = qwen3_like_config(architectures=['SDARForCausalLM'], model_type='sdar', rope_theta=12345.0,
                            auto_map={'AutoConfig': 'configuration_sdar.SDARConfig'})
    del cfg['rope_parameters']
    model_config = ModelConfig.from_pretrained(write_hf_config(tmp_path / 'SDAR-r', **cfg), trust_remote_code=False)
    assert model_config.hf_config.rope_parameters == {'rope_type': 'default', 'rope_theta': 12345.0}
    assert get_rope_theta(model_config.hf_config, default=1.0) == 12345.0


@pytest.mark.parametrize('options', [{'enable_delayed_cache': True}, {'enable_focus': True}])
def test_a_sliding_window_is_refused_naming_the_config_field_that_turns_it_off(sdar_dir, options):
    """The delayed-cache / FOCUS step attends over the whole history: a config whose window is on (use_sliding_window
    unset counts as on, upstream's default) is refused at engine build, naming the field to set; with the field
    set, or without delayed cache, the same model builds."""
    window = sdar_dir('SDAR-window', sliding_window=4096)
    model_config = ModelConfig.from_pretrained(window, hf_overrides={OPTIONS_KEY: options})
    assert model_config.sliding_window == 4096
    with pytest.raises(ValueError, match='sliding_window=4096.*"use_sliding_window": false in its config.json'):
        FocusDLLMStrategyFactory(model_config, DLLMConfig(block_length=32))
    turned_off = ModelConfig.from_pretrained(sdar_dir('SDAR-nowindow', sliding_window=4096, use_sliding_window=False),
                                             hf_overrides={OPTIONS_KEY: options})
    assert FocusDLLMStrategyFactory(turned_off, DLLMConfig(block_length=32)).delayed_cache_runtime is not None
    stock = ModelConfig.from_pretrained(window)
    assert FocusDLLMStrategyFactory(stock, DLLMConfig(block_length=32)).delayed_cache_runtime is None
