"""Attention of a delayed-cache decode step: sparse KV fill + ragged paged attention.

Wraps a layer's upstream ``Attention`` module; outside delayed-cache decode steps (prefill,
warm-up dummies, stock decoding) every call goes to upstream unchanged. In a FOCUS step, layer 0
also scores the masked candidates (the importance the eviction layer subtracts).
"""
from torch import nn

from ..kernels import focus_ops
from ..kernels.paged_ops import ragged_attention, sparse_fill_kv


class DelayedCacheAttention(nn.Module):

    def __init__(self, upstream: nn.Module, runtime, head_dim: int, layer_idx: int = -1):
        super().__init__()
        self.upstream = upstream
        self.runtime = runtime
        self.layer_idx = layer_idx
        self.scale = getattr(getattr(upstream, 'impl', None), 'scale', None) or head_dim**-0.5

    def forward(self, query, key, value, k_cache, v_cache, attn_metadata, **kwargs):
        step = self.runtime.step
        if step is None:
            return self.upstream(query, key, value, k_cache, v_cache, attn_metadata, **kwargs)
        meta = step.meta
        focus = step.focus
        if focus is not None and self.layer_idx == 0 and focus.config.needs_importance:
            focus.importance0 = focus_ops.masked_importance(query, key, meta.q_start_loc, meta.q_seqlens,
                                                            focus.candidate, self.scale, max_q_len=meta.max_q_seqlen)
        block_offsets = attn_metadata.block_offsets
        # Processed tokens get their K/V written at history + p (positions left out keep theirs).
        sparse_fill_kv(key, value, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens,
                       meta.position_ids, meta.kv_seqlens)
        return ragged_attention(query, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens,
                                meta.kv_seqlens, self.scale, max_q_len=meta.max_q_seqlen)
