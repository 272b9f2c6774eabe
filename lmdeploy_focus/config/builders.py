"""Model-config builders for the DLLMs lmdeploy-focus serves.

Defining a subclass of ``AutoModelConfigBuilder`` registers it; :mod:`lmdeploy_focus.patch.config_builders`
puts the SDAR one in front of upstream's so that it wins the first-match lookup.
"""
from lmdeploy.pytorch.configurations.builder import AutoModelConfigBuilder
from lmdeploy.pytorch.configurations.default import DefaultModelConfigBuilder
from lmdeploy.pytorch.configurations.sdar import SDARModelConfigBuilder

from .model_facts import (LLADA2_DEFAULT_BLOCK_LENGTH, LLADA2_MASK_TOKEN, LLADA2_MODEL_TYPE, SDAR_MASK_TOKEN,
                          block_length_from_path, ensure_rope_parameters, mask_token_from_hf_config)


class FocusSDARModelConfigBuilder(SDARModelConfigBuilder):
    """SDAR: mask token from the checkpoint's ``mask_token_id``; block length from a ``-b<N>`` path."""

    @classmethod
    def build(cls, hf_config, model_path: str = None, **kwargs):
        ensure_rope_parameters(hf_config)
        cfg = super().build(hf_config, model_path, **kwargs)
        cfg.dllm_mask_token = mask_token_from_hf_config(hf_config, SDAR_MASK_TOKEN)
        cfg.dllm_block_length = block_length_from_path(model_path)
        return cfg


class LLaDA2ModelConfigBuilder(AutoModelConfigBuilder):
    """LLaDA2.0 (``llada2_moe``): a block-diffusion MoE, block length 32 unless configured."""

    @classmethod
    def condition(cls, hf_config):
        return getattr(hf_config, 'model_type', None) == LLADA2_MODEL_TYPE

    @classmethod
    def build(cls, hf_config, model_path: str = None, **kwargs):
        ensure_rope_parameters(hf_config)
        if not hasattr(hf_config, 'bos_token_id'):
            # LLaDA2 configs have no BOS and transformers 5 no longer defaults it; upstream reads it
            hf_config.bos_token_id = None
        cfg = DefaultModelConfigBuilder.build(hf_config, model_path, **kwargs)
        cfg.model_paradigm = 'dllm'
        cfg.dllm_mask_token = mask_token_from_hf_config(hf_config, LLADA2_MASK_TOKEN)
        cfg.dllm_block_length = LLADA2_DEFAULT_BLOCK_LENGTH
        return cfg
