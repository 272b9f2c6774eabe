"""Attention of a delayed-cache decode step: sparse KV fill + ragged paged attention.

Wraps a layer's upstream ``Attention`` module; outside delayed-cache decode steps (prefill,
warm-up dummies, stock decoding) every call goes to upstream unchanged.
"""
from torch import nn

from ..kernels.paged_ops import ragged_attention, sparse_fill_kv


class DelayedCacheAttention(nn.Module):

    def __init__(self, upstream: nn.Module, runtime, head_dim: int):
        super().__init__()
        self.upstream = upstream
        self.runtime = runtime
        self.scale = getattr(getattr(upstream, 'impl', None), 'scale', None) or head_dim**-0.5

    def forward(self, query, key, value, k_cache, v_cache, attn_metadata, **kwargs):
        step = self.runtime.step
        if step is None:
            return self.upstream(query, key, value, k_cache, v_cache, attn_metadata, **kwargs)
        meta = step.meta
        block_offsets = attn_metadata.block_offsets
        # Processed tokens get their K/V written at history + p (positions left out keep theirs).
        sparse_fill_kv(key, value, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens,
                       meta.position_ids, meta.kv_seqlens)
        return ragged_attention(query, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens,
                                meta.kv_seqlens, self.scale, max_q_len=meta.max_q_seqlen)
