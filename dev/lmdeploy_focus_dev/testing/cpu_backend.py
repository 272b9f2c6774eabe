"""A CPU ops backend for running upstream LMDeploy model modules in tests without a GPU.

Upstream's ``DefaultOpsBackend`` already has pure-torch linear, norm, rotary, activation, embedding
and MoE-router ops. This backend adds what only CUDA has: paged attention (and its step metadata,
built on :mod:`lmdeploy_focus.kernels.default.paged_attention`), the fused MoE experts, and partial
rotary embedding (cos/sin narrower than the head, as the CUDA kernel allows). It is selected
through :mod:`lmdeploy_focus_dev.testing.cpu_backend_selector` (tests only).
"""
from dataclasses import dataclass
from typing import cast

import torch
from lmdeploy.messages import QuantPolicy
from lmdeploy.pytorch.backends.apply_rotary_emb import ApplyRotaryEmbBuildSpec
from lmdeploy.pytorch.backends.attention import AttentionImpl, AttentionMetadata, PagedAttentionBuildSpec
from lmdeploy.pytorch.backends.base import BuildSpec, ImplT
from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbImpl
from lmdeploy.pytorch.backends.default.op_backend import DefaultOpsBackend
from lmdeploy.pytorch.backends.moe import FusedMoEBuildSpec, FusedMoEImpl

from lmdeploy_focus_dev.reference.moe import mix_experts
from lmdeploy_focus.kernels.default.paged_attention import CAUSAL, NON_CAUSAL, fill_kv_cache, paged_attention


@dataclass
class CpuAttentionMetadata(AttentionMetadata):
    """Upstream attention metadata plus the masking rule of this step.

    ``causal_block_size``: ``None`` non-causal over the kv range (DLLM decode), ``1`` causal (AR),
    ``L`` block-causal (DLLM prefill with block length ``L``).
    """
    causal_block_size: int | None = CAUSAL
    max_q_seqlen: int | None = None
    max_kv_seqlen: int | None = None


def _has_sliding_window(sliding_window) -> bool:
    if sliding_window is None:
        return False
    if isinstance(sliding_window, int):
        return sliding_window > 0
    return any(w > 0 for w in sliding_window)


class CpuPagedAttentionImpl(AttentionImpl[CpuAttentionMetadata]):
    """Same interface as upstream ``TritonAttentionImpl.forward``: write the new K/V of the step
    into the paged cache, then attend each query over its sequence's ``kv_seqlens`` keys."""

    def __init__(self, spec: PagedAttentionBuildSpec):
        super().__init__(num_heads=spec.num_heads,
                         head_size=spec.head_dim,
                         scale=spec.scale,
                         num_kv_heads=spec.num_kv_heads,
                         v_head_size=spec.v_head_dim,
                         alibi=spec.alibi,
                         sliding_window=spec.sliding_window,
                         logit_softcapping=spec.logit_softcapping,
                         causal=spec.causal,
                         use_flash_mla=spec.use_flash_mla)
        # Refuse features the reference does not model rather than silently ignoring them.
        unsupported = dict(alibi=spec.alibi,
                           sliding_window=_has_sliding_window(spec.sliding_window),
                           logit_softcapping=spec.logit_softcapping > 0,
                           use_flash_mla=spec.use_flash_mla,
                           mla_index_topk=spec.mla_index_topk is not None,
                           learnable_sink=spec.learnable_sink)
        used = [name for name, on in unsupported.items() if on]
        if used:
            raise NotImplementedError(f'CPU paged attention does not support {used}')
        self.block_sparse_size = spec.block_sparse_size

    def forward(self,
                query: torch.Tensor,
                key: torch.Tensor,
                value: torch.Tensor,
                k_cache: torch.Tensor,
                v_cache: torch.Tensor,
                attn_metadata: CpuAttentionMetadata,
                k_scales_zeros: torch.Tensor = None,
                v_scales_zeros: torch.Tensor = None,
                learnable_sink: torch.Tensor = None,
                nsa_indices: torch.Tensor = None,
                inplace: bool = True,
                **kwargs) -> torch.Tensor:
        """query ``[num_tokens, heads, dim]``, key/value ``[num_tokens, kv_heads, dim]`` (or
        ``None`` to only read the cache); returns ``[num_tokens, heads, v_dim]``."""
        assert attn_metadata.quant_policy == QuantPolicy.NONE, 'CPU attention only supports an unquantised cache'
        assert learnable_sink is None and nsa_indices is None
        meta = attn_metadata
        if key is not None and value is not None:
            fill_kv_cache(key, value, k_cache, v_cache, meta.block_offsets, meta.q_start_loc, meta.q_seqlens,
                          meta.kv_seqlens)
        causal_block_size = meta.causal_block_size if self.causal else NON_CAUSAL
        if not meta.is_decoding and self.causal:
            # Upstream prefill masks with the layer's block_sparse_size; the step metadata must agree.
            assert causal_block_size == self.block_sparse_size, (
                f'step mask block {causal_block_size} != layer block_sparse_size {self.block_sparse_size}')
        return paged_attention(query,
                               k_cache,
                               v_cache,
                               meta.block_offsets,
                               meta.q_start_loc,
                               meta.q_seqlens,
                               meta.kv_seqlens,
                               scale=self.scale,
                               causal_block_size=causal_block_size)


class CpuFusedMoEImpl(FusedMoEImpl):
    """Routed experts, one expert at a time: ``sum_k w_k * down_e(silu(gate_e(x)) * up_e(x))``.

    Weight layout as upstream's ``FusedMoE``: ``gate_up [E, 2F, H]`` (gate rows first), ``down [E, H, F]``.
    """

    def __init__(self, spec: FusedMoEBuildSpec):
        if spec.ep_size != 1:
            raise NotImplementedError('CPU fused MoE supports ep_size 1 only')
        self.renormalize = spec.renormalize  # top-k weights divided by their sum (Qwen3-MoE's norm_topk_prob)

    def forward(self, hidden_states, topk_weights, topk_ids, gate_up_weights, down_weights, gate_up_bias=None,
                down_bias=None, expert_list=None, act_func=None):
        if gate_up_bias is not None or down_bias is not None or expert_list is not None or act_func is not None:
            raise NotImplementedError('CPU fused MoE has no expert biases, expert lists or custom activations')
        if self.renormalize:
            topk_weights = topk_weights / topk_weights.sum(-1, keepdim=True)

        def expert_mlp(e, x):
            gate, up = (x @ gate_up_weights[e].T).chunk(2, dim=-1)
            return (torch.nn.functional.silu(gate) * up) @ down_weights[e].T

        return mix_experts(hidden_states, topk_ids, topk_weights, expert_mlp)


class CpuPartialRotaryImpl(DefaultApplyRotaryEmbImpl):
    """Upstream's CPU rotary, plus what the CUDA kernel does when cos/sin cover only the first
    ``rope_dim`` features of a head (partial rotary): in place, rotate those and leave the rest."""

    def forward(self, query, key, cos, sin, inplace: bool = True, complex_mode: bool = False):
        rope_dim = cos.size(-1)
        if complex_mode or query.size(-1) == rope_dim:
            return super().forward(query, key, cos, sin, inplace=inplace, complex_mode=complex_mode)
        if not inplace:
            # CUDA writes only the rotary features into a fresh output: the rest would be garbage there
            raise NotImplementedError('partial rotary out of place leaves features past rope_dim unwritten on CUDA; '
                                      'apply it in place')
        q_rot, k_rot = super().forward(query[..., :rope_dim], key[..., :rope_dim], cos, sin, inplace=False)
        query[..., :rope_dim] = q_rot
        key[..., :rope_dim] = k_rot
        return query, key


def dllm_block_length(model_config) -> int:
    """Block length of a DLLM model config; the DLLM strategy factory writes it into
    ``model_config`` and upstream SDAR writes it into ``hf_config`` at build time."""
    block_length = model_config.dllm_block_length
    if block_length is None:
        block_length = getattr(model_config.hf_config, 'dllm_block_length', None)
    if block_length is None:
        raise ValueError('DLLM model config has no dllm_block_length')
    return block_length


def step_causal_block_size(step_context) -> int | None:
    """Masking rule of a step, mirroring upstream CUDA: DLLM decode attends bidirectionally over
    the whole kv range (paged decode kernel), DLLM prefill is block-causal (varlen kernel with
    ``block_sparse_size``), AR is causal."""
    if step_context.model_config.model_paradigm != 'dllm':
        return CAUSAL
    if step_context.is_decoding:
        return NON_CAUSAL
    return dllm_block_length(step_context.model_config)


class CpuOpsBackend(DefaultOpsBackend):
    """``DefaultOpsBackend`` plus pure-torch paged attention, fused MoE and partial rotary."""

    @staticmethod
    def get_name() -> str:
        return 'cpu_reference'

    @classmethod
    def build_op(cls, spec: BuildSpec[ImplT], *, enable_deterministic: bool = False) -> ImplT:
        if isinstance(spec, PagedAttentionBuildSpec):
            return cast(ImplT, CpuPagedAttentionImpl(spec))
        if isinstance(spec, FusedMoEBuildSpec):
            return cast(ImplT, CpuFusedMoEImpl(spec))
        if isinstance(spec, ApplyRotaryEmbBuildSpec):
            return cast(ImplT, CpuPartialRotaryImpl())
        return super().build_op(spec, enable_deterministic=enable_deterministic)

    @staticmethod
    def get_attention_metadata_cls():
        return CpuAttentionMetadata

    @classmethod
    def update_step_context(cls, step_context):
        """Attach :class:`CpuAttentionMetadata` built from the step's sequence layout."""
        q_seqlens = step_context.q_seqlens
        kv_seqlens = step_context.kv_seqlens
        zero = q_seqlens.new_zeros(1)
        step_context.attn_metadata = CpuAttentionMetadata(
            is_decoding=step_context.is_decoding,
            block_offsets=step_context.block_offsets,
            q_start_loc=step_context.q_start_loc,
            q_seqlens=q_seqlens,
            kv_seqlens=kv_seqlens,
            cu_seqlens_q=torch.cat([zero, q_seqlens.cumsum(0)]),
            cu_seqlens_k=torch.cat([zero, kv_seqlens.cumsum(0)]),
            quant_policy=step_context.kv_quant_policy,
            causal_block_size=step_causal_block_size(step_context),
            max_q_seqlen=step_context.max_q_seqlen,
            max_kv_seqlen=step_context.max_kv_seqlen,
        )
        return step_context
