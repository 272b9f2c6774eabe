"""A tiny random-weight LLaDA2 (dense layer 0, MoE after) built through upstream's construction path on CPU.

Same path as the tiny SDAR (:mod:`.tiny_model`). The engine runs in float64 by default: MoE
routing is a discrete choice, and fp32 rounding differences against the fp64 reference would now
and then pick a different expert. Both sides round the router logits to fp32 (as the checkpoint's
code does); what remains is upstream's fp32 RoPE angles, about one fp32 ulp in a router logit,
so a flip needs two experts within an ulp (rare, not impossible).
"""
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from lmdeploy_focus_dev.testing.tiny_model import TinyDLLM, build_tiny_model


@dataclass(frozen=True)
class TinyLLaDA2Shape:
    """Sizes of the test model: partial rotary, GQA, 16 experts in 4 groups, 3 chosen from 2 groups."""
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    partial_rotary_factor: float = 0.5
    intermediate_size: int = 96
    num_experts: int = 16
    num_experts_per_tok: int = 3
    num_shared_experts: int = 1
    moe_intermediate_size: int = 24
    first_k_dense_replace: int = 1
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 2.5
    vocab_size: int = 512
    use_qk_norm: bool = True
    rope_theta: float = 600000.0


def tiny_llada2_hf_config(shape: TinyLLaDA2Shape = TinyLLaDA2Shape()) -> PretrainedConfig:
    """HF config of a LLaDA2 checkpoint (``model_type='llada2_moe'``) with ``shape``'s sizes; mask = last id."""
    return PretrainedConfig(
        model_type='llada2_moe',
        architectures=['LLaDA2MoeModelLM'],
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        rope_theta=shape.rope_theta,
        partial_rotary_factor=shape.partial_rotary_factor,
        use_qk_norm=shape.use_qk_norm,
        use_qkv_bias=False,
        use_bias=False,
        num_experts=shape.num_experts,
        num_experts_per_tok=shape.num_experts_per_tok,
        num_shared_experts=shape.num_shared_experts,
        moe_intermediate_size=shape.moe_intermediate_size,
        first_k_dense_replace=shape.first_k_dense_replace,
        n_group=shape.n_group,
        topk_group=shape.topk_group,
        score_function='sigmoid',
        moe_router_enable_expert_bias=True,
        routed_scaling_factor=shape.routed_scaling_factor,
        norm_topk_prob=True,
        router_dtype='fp32',
        hidden_act='silu',
        tie_word_embeddings=False,
        eos_token_id=1,
        pad_token_id=1,
        mask_token_id=shape.vocab_size - 1,
        dtype='float32',
    )


def random_llada2_weights(hf_config: PretrainedConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random fp32 weights under LLaDA2 checkpoint names (fused query_key_value, per-expert projections).

    Scales as for the tiny SDAR. Router rows ~ N(0, 4/fan_in) spread the expert scores. The expert
    bias (added to the sigmoid scores for selection only) is drawn from [-1.2, -0.8): it changes
    which experts win, and most biased scores are negative, where excluding the other groups with
    -inf (LLaDA2) and with 0 (upstream's kernels) differ unless the engine shifts the bias.
    """
    c = hf_config
    h, hd = c.hidden_size, c.head_dim

    def linear(out_features, in_features, gain=1.0):
        return gain * torch.randn(out_features, in_features, generator=generator) / in_features**0.5

    def norm(size):
        return 1 + 0.1 * torch.randn(size, generator=generator)

    def swiglu(prefix, inter):
        return {f'{prefix}.gate_proj.weight': linear(inter, h), f'{prefix}.up_proj.weight': linear(inter, h),
                f'{prefix}.down_proj.weight': linear(h, inter)}

    weights = {'model.word_embeddings.weight': torch.randn(c.vocab_size, h, generator=generator)}
    for i in range(c.num_hidden_layers):
        p = f'model.layers.{i}'
        weights.update({
            f'{p}.input_layernorm.weight': norm(h),
            f'{p}.attention.query_key_value.weight': linear((c.num_attention_heads + 2 * c.num_key_value_heads) * hd, h),
            f'{p}.attention.dense.weight': linear(h, c.num_attention_heads * hd),
            f'{p}.post_attention_layernorm.weight': norm(h),
        })
        if c.use_qk_norm:
            weights[f'{p}.attention.query_layernorm.weight'] = norm(hd)
            weights[f'{p}.attention.key_layernorm.weight'] = norm(hd)
        if i < c.first_k_dense_replace:
            weights.update(swiglu(f'{p}.mlp', c.intermediate_size))
            continue
        weights[f'{p}.mlp.gate.weight'] = linear(c.num_experts, h, gain=2.0)
        weights[f'{p}.mlp.gate.expert_bias'] = -1.2 + 0.4 * torch.rand(c.num_experts, generator=generator)
        for e in range(c.num_experts):
            weights.update(swiglu(f'{p}.mlp.experts.{e}', c.moe_intermediate_size))
        weights.update(swiglu(f'{p}.mlp.shared_experts', c.moe_intermediate_size * c.num_shared_experts))
    weights['model.norm.weight'] = norm(h)
    weights['lm_head.weight'] = linear(c.vocab_size, h)
    return weights


def build_tiny_llada2(shape: TinyLLaDA2Shape = TinyLLaDA2Shape(),
                      block_length: int = 4,
                      seed: int | None = None,
                      hf_overrides: dict | None = None,
                      dtype: str = 'float64',
                      dllm_config=None) -> TinyDLLM:
    """Build and load a random-weight LLaDA2 on CPU (see :func:`~.tiny_model.build_tiny_model`)."""
    return build_tiny_model(tiny_llada2_hf_config(shape), random_llada2_weights, block_length=block_length,
                            seed=seed, hf_overrides=hf_overrides, dtype=dtype, dllm_config=dllm_config)
