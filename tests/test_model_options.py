"""FOCUS options on the ModelConfig the engine resolves (patch 4): kept for a DLLM, ignored with a warning for another
model, refused beside speculative decoding."""
import logging

import pytest
from lmdeploy.pytorch.config import ModelConfig

from conftest import qwen3_like_config, write_hf_config
from lmdeploy_focus.config.options import OPTIONS_KEY

FOCUS = {OPTIONS_KEY: {'enable_focus': True}}


@pytest.mark.parametrize('spec_method', ['eagle3', 'dflash'])
def test_focus_beside_speculative_decoding_is_refused_naming_both_flags(sdar_dir, spec_method):
    """eagle3 kept FOCUS on a DLLM target whose agent would drive a step never built for it; dflash made the target
    autoregressive and FOCUS was dropped with a warning blaming the model ('not a diffusion LLM')."""
    with pytest.raises(ValueError, match='speculative decoding.*--speculative-algorithm.*--focus'):
        ModelConfig.from_pretrained(sdar_dir('SDAR-x-b32'), hf_overrides=FOCUS, spec_method=spec_method,
                                    device_type='cpu')


def test_positional_spec_method_is_seen(sdar_dir):
    with pytest.raises(ValueError, match="method 'eagle3'"):
        ModelConfig.from_pretrained(sdar_dir('SDAR-x-b32'), False, 'auto', None, FOCUS, False, 'eagle3',
                                    device_type='cpu')


def test_speculative_decoding_without_focus_and_focus_without_it_are_upstreams(sdar_dir):
    plain = ModelConfig.from_pretrained(sdar_dir('SDAR-x-b32'), spec_method='eagle3', device_type='cpu')
    assert getattr(plain.hf_config, OPTIONS_KEY, None) is None
    focus = ModelConfig.from_pretrained(sdar_dir('SDAR-x-b32'), hf_overrides=FOCUS, device_type='cpu')
    assert getattr(focus.hf_config, OPTIONS_KEY)['enable_focus'] is True and focus.model_paradigm == 'dllm'


def test_focus_for_an_autoregressive_model_is_ignored_with_a_warning(tmp_path, focus_logs):
    path = write_hf_config(tmp_path / 'qwen3', **qwen3_like_config(architectures=['Qwen3ForCausalLM'],
                                                                    model_type='qwen3'))
    config = ModelConfig.from_pretrained(path, hf_overrides=FOCUS, device_type='cpu')
    assert getattr(config.hf_config, OPTIONS_KEY, None) is None
    assert any('is not a diffusion LLM' in m for m in focus_logs.messages(logging.WARNING))
