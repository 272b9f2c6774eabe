"""A tiny random-weight SDAR-MoE (dense layer 0, MoE after) built through upstream's construction path on CPU.

Same path as the tiny SDAR (:mod:`.tiny_model`); the engine runs in float64 for the reason given
in :mod:`.llada2_cpu` (routing is a discrete choice).
"""
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, random_sdar_weights, tiny_sdar_hf_config
from lmdeploy_focus_dev.testing.tiny_model import TinyDLLM, build_tiny_model


@dataclass(frozen=True)
class TinySDARMoeShape:
    num_layers: int = 3
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 24
    mlp_only_layers: tuple[int, ...] = (0, )


def tiny_sdar_moe_hf_config(shape: TinySDARMoeShape = TinySDARMoeShape()) -> PretrainedConfig:
    """HF config of an SDAR-MoE checkpoint (``model_type='sdar_moe'``); attention sizes of the tiny SDAR."""
    config = tiny_sdar_hf_config(TinySDARShape(num_layers=shape.num_layers))
    config.model_type = 'sdar_moe'
    config.architectures = ['SDARMoeForCausalLM']
    config.num_experts = shape.num_experts
    config.num_experts_per_tok = shape.num_experts_per_tok
    config.moe_intermediate_size = shape.moe_intermediate_size
    config.norm_topk_prob = True
    config.decoder_sparse_step = 1
    config.mlp_only_layers = list(shape.mlp_only_layers)
    return config


def random_sdar_moe_weights(hf_config: PretrainedConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The tiny SDAR's tensors, with each MoE layer's dense MLP replaced by a router and experts."""
    weights = random_sdar_weights(hf_config, generator)
    h, inter = hf_config.hidden_size, hf_config.moe_intermediate_size
    for i in range(hf_config.num_hidden_layers):
        if i in hf_config.mlp_only_layers:
            continue
        p = f'model.layers.{i}.mlp'
        for name in ('gate_proj', 'up_proj', 'down_proj'):
            del weights[f'{p}.{name}.weight']
        weights[f'{p}.gate.weight'] = 2.0 * torch.randn(hf_config.num_experts, h, generator=generator) / h**0.5
        for e in range(hf_config.num_experts):
            weights[f'{p}.experts.{e}.gate_proj.weight'] = torch.randn(inter, h, generator=generator) / h**0.5
            weights[f'{p}.experts.{e}.up_proj.weight'] = torch.randn(inter, h, generator=generator) / h**0.5
            weights[f'{p}.experts.{e}.down_proj.weight'] = torch.randn(h, inter, generator=generator) / inter**0.5
    return weights


def build_tiny_sdar_moe(shape: TinySDARMoeShape = TinySDARMoeShape(),
                        block_length: int = 4,
                        seed: int | None = None,
                        hf_overrides: dict | None = None,
                        dtype: str = 'float64',
                        dllm_config=None) -> TinyDLLM:
    return build_tiny_model(tiny_sdar_moe_hf_config(shape), random_sdar_moe_weights, block_length=block_length,
                            seed=seed, hf_overrides=hf_overrides, dtype=dtype, dllm_config=dllm_config)
