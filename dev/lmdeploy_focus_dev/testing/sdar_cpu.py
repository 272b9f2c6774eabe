"""A tiny random-weight SDAR built through upstream's own construction path, on CPU (fp32).

Typical use::

    sdar = build_tiny_sdar(block_length=4)
    runner = sdar.new_runner(page_size=16)
    block_logits = runner.prefill([[5, 6, 7], [8, 9, 10, 11, 12]])      # [2, 4, vocab]
    block_logits = runner.decode_step(new_blocks)                        # [2, 4, vocab]
    k, v = runner.kv_cache.read(layer=0, seq_id=1, kv_len=8)
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from lmdeploy_focus_dev.testing.tiny_model import TinyDLLM, build_tiny_model


@dataclass(frozen=True)
class TinySDARShape:
    """Sizes of the test model (GQA: 2 query heads per kv head)."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vocab_size: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096


def tiny_sdar_hf_config(shape: TinySDARShape = TinySDARShape(), mask_token_id: int | None = None) -> PretrainedConfig:
    """HF config of an SDAR checkpoint (``model_type='sdar'``) with ``shape``'s sizes.

    The mask token defaults to the last vocab id: the real one (151669) does not fit a tiny vocab.
    """
    return PretrainedConfig(
        model_type='sdar',
        architectures=['SDARForCausalLM'],
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        rms_norm_eps=shape.rms_norm_eps,
        max_position_embeddings=shape.max_position_embeddings,
        # transformers >= 5 reads RoPE settings from rope_parameters (rope_theta alone is ignored)
        rope_parameters=dict(rope_type='default', rope_theta=shape.rope_theta),
        attention_bias=False,
        sliding_window=None,
        use_sliding_window=False,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        mask_token_id=shape.vocab_size - 1 if mask_token_id is None else mask_token_id,
        dtype='float32',
    )


def random_sdar_weights(hf_config: PretrainedConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random fp32 weights under HF checkpoint names (separate q/k/v and gate/up projections).

    Linear weights ~ N(0, 1/fan_in) keep activations O(1); norm weights ~ 1 + N(0, 0.1²) so a
    wrongly skipped or misplaced norm weight changes the output.
    """
    hidden = hf_config.hidden_size
    head_dim = hf_config.head_dim
    q_dim = hf_config.num_attention_heads * head_dim
    kv_dim = hf_config.num_key_value_heads * head_dim
    inter = hf_config.intermediate_size

    def linear(out_features, in_features):
        return torch.randn(out_features, in_features, generator=generator) / in_features**0.5

    def norm(size):
        return 1 + 0.1 * torch.randn(size, generator=generator)

    weights = {'model.embed_tokens.weight': torch.randn(hf_config.vocab_size, hidden, generator=generator)}
    for i in range(hf_config.num_hidden_layers):
        p = f'model.layers.{i}.'
        weights.update({
            p + 'input_layernorm.weight': norm(hidden),
            p + 'self_attn.q_proj.weight': linear(q_dim, hidden),
            p + 'self_attn.k_proj.weight': linear(kv_dim, hidden),
            p + 'self_attn.v_proj.weight': linear(kv_dim, hidden),
            p + 'self_attn.o_proj.weight': linear(hidden, q_dim),
            p + 'self_attn.q_norm.weight': norm(head_dim),
            p + 'self_attn.k_norm.weight': norm(head_dim),
            p + 'post_attention_layernorm.weight': norm(hidden),
            p + 'mlp.gate_proj.weight': linear(inter, hidden),
            p + 'mlp.up_proj.weight': linear(inter, hidden),
            p + 'mlp.down_proj.weight': linear(hidden, inter),
        })
    weights['model.norm.weight'] = norm(hidden)
    weights['lm_head.weight'] = linear(hf_config.vocab_size, hidden)
    return weights


def build_tiny_sdar(shape: TinySDARShape = TinySDARShape(),
                    block_length: int = 4,
                    seed: int | None = None,
                    hf_overrides: dict | None = None,
                    model_cls: Callable | None = None,
                    dllm_config=None) -> TinyDLLM:
    """Build and load a random-weight SDAR on CPU (see :func:`~.tiny_model.build_tiny_model`)."""
    return build_tiny_model(tiny_sdar_hf_config(shape), random_sdar_weights, block_length=block_length, seed=seed,
                            hf_overrides=hf_overrides, model_cls=model_cls, dllm_config=dllm_config)
