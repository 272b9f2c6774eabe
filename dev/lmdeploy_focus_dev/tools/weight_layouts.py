"""Tensor names, shapes and init rule of each checkpoint family, in on-disk (module) order.

Names are exactly those of the published HF checkpoints: SDAR/Qwen3 keep separate q/k/v/o and
gate/up/down projections (LMDeploy stacks them while loading); LLaDA2 fuses query_key_value.
"""

import math
from dataclasses import dataclass

from .arch_specs import ArchSpec


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: str = 'normal'  # 'normal' (std 0.02) | 'ones' (norm scales) | 'zeros' (router bias)
    dtype: str | None = None  # None: the checkpoint dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _mlp(prefix: str, hidden: int, intermediate: int) -> list[TensorSpec]:
    return [
        TensorSpec(f'{prefix}.gate_proj.weight', (intermediate, hidden)),
        TensorSpec(f'{prefix}.up_proj.weight', (intermediate, hidden)),
        TensorSpec(f'{prefix}.down_proj.weight', (hidden, intermediate)),
    ]


def _qwen3_mlp(s: ArchSpec, layer: int) -> list[TensorSpec]:
    return _mlp(f'model.layers.{layer}.mlp', s.hidden_size, s.intermediate_size)


def _qwen3_moe_mlp(s: ArchSpec, layer: int) -> list[TensorSpec]:
    """Qwen3-MoE's MLP: a dense one in layers [0, first_k_dense_replace) (``mlp_only_layers``), else a router
    and ``num_experts`` experts without shared ones."""
    moe, p = s.moe, f'model.layers.{layer}.mlp'
    if layer < moe.first_k_dense_replace:
        return _qwen3_mlp(s, layer)
    tensors = [TensorSpec(f'{p}.gate.weight', (moe.num_experts, s.hidden_size))]
    for e in range(moe.num_experts):
        tensors += _mlp(f'{p}.experts.{e}', s.hidden_size, moe.moe_intermediate_size)
    return tensors


def _qwen3_tensors(s: ArchSpec, mlp=_qwen3_mlp) -> list[TensorSpec]:
    h, q_dim, kv_dim = s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    tensors = [TensorSpec('model.embed_tokens.weight', (s.vocab_size, h))]
    for i in range(s.num_layers):
        p = f'model.layers.{i}'
        tensors += [
            TensorSpec(f'{p}.self_attn.q_proj.weight', (q_dim, h)),
            TensorSpec(f'{p}.self_attn.k_proj.weight', (kv_dim, h)),
            TensorSpec(f'{p}.self_attn.v_proj.weight', (kv_dim, h)),
            TensorSpec(f'{p}.self_attn.o_proj.weight', (h, q_dim)),
            TensorSpec(f'{p}.self_attn.q_norm.weight', (s.head_dim, ), 'ones'),
            TensorSpec(f'{p}.self_attn.k_norm.weight', (s.head_dim, ), 'ones'),
            *mlp(s, i),
            TensorSpec(f'{p}.input_layernorm.weight', (h, ), 'ones'),
            TensorSpec(f'{p}.post_attention_layernorm.weight', (h, ), 'ones'),
        ]
    tensors.append(TensorSpec('model.norm.weight', (h, ), 'ones'))
    if not s.tie_word_embeddings:  # tied checkpoints store the embedding once
        tensors.append(TensorSpec('lm_head.weight', (s.vocab_size, h)))
    return tensors


def _llada2_tensors(s: ArchSpec) -> list[TensorSpec]:
    moe = s.moe
    h = s.hidden_size
    qkv_rows = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    tensors = [TensorSpec('model.word_embeddings.weight', (s.vocab_size, h))]
    for i in range(s.num_layers):
        p = f'model.layers.{i}'
        tensors += [
            TensorSpec(f'{p}.input_layernorm.weight', (h, ), 'ones'),
            TensorSpec(f'{p}.attention.query_key_value.weight', (qkv_rows, h)),
            TensorSpec(f'{p}.attention.query_layernorm.weight', (s.head_dim, ), 'ones'),
            TensorSpec(f'{p}.attention.key_layernorm.weight', (s.head_dim, ), 'ones'),
            TensorSpec(f'{p}.attention.dense.weight', (h, s.num_heads * s.head_dim)),
            TensorSpec(f'{p}.post_attention_layernorm.weight', (h, ), 'ones'),
        ]
        if i < moe.first_k_dense_replace:
            tensors += _mlp(f'{p}.mlp', h, s.intermediate_size)
            continue
        # selection-only router bias, zeros = unbiased routing. Stored float32 as routers of this
        # kind (tiny load-balancing updates) usually are; unverified for LLaDA2 itself, and
        # loaders cast to their parameter dtype anyway
        tensors += [
            TensorSpec(f'{p}.mlp.gate.weight', (moe.num_experts, h)),
            TensorSpec(f'{p}.mlp.gate.expert_bias', (moe.num_experts, ), 'zeros', dtype='float32'),
        ]
        for e in range(moe.num_experts):
            tensors += _mlp(f'{p}.mlp.experts.{e}', h, moe.moe_intermediate_size)
        tensors += _mlp(f'{p}.mlp.shared_experts', h, moe.moe_intermediate_size * moe.num_shared_experts)
    tensors.append(TensorSpec('model.norm.weight', (h, ), 'ones'))
    if not s.tie_word_embeddings:
        tensors.append(TensorSpec('lm_head.weight', (s.vocab_size, h)))
    return tensors


def tensor_specs(spec: ArchSpec) -> list[TensorSpec]:
    builders = {'qwen3': _qwen3_tensors, 'qwen3_moe': lambda s: _qwen3_tensors(s, _qwen3_moe_mlp),
                'llada2_moe': _llada2_tensors}
    return builders[spec.family](spec)


def parameter_count(spec: ArchSpec) -> int:
    return sum(t.numel for t in tensor_specs(spec))
