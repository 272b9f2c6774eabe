"""Attention of the deep layers of a delayed-cache decode step: sparse KV fill + ragged paged attention.

Wraps a layer's upstream ``Attention`` module. While the step's deep layers run
(``runtime.attention_rows`` set, see :func:`~.sparse_step.deep`) it writes K/V of the step's rows
at their positions and attends over each sequence's keys up to the step's ``kv_seqlens`` (``DeepRows``); everywhere else
(prefill, warm-up dummies, stock decoding) every call goes to upstream unchanged.
"""
from torch import nn

from ..kernels.paged_ops import ragged_attention, sparse_fill_kv


class DelayedCacheAttention(nn.Module):

    def __init__(self, upstream: nn.Module, runtime, head_dim: int, layer_idx: int = -1):
        super().__init__()
        self.upstream = upstream
        self.runtime = runtime
        self.layer_idx = layer_idx
        self.scale = getattr(getattr(upstream, 'impl', None), 'scale', None) or head_dim**-0.5

    def forward(self, query, key, value, k_cache, v_cache, attn_metadata, **kwargs):
        rows = self.runtime.attention_rows
        if rows is None:
            return self.upstream(query, key, value, k_cache, v_cache, attn_metadata, **kwargs)
        # The rows get their K/V written at history + p (positions left out keep theirs).
        sparse_fill_kv(key, value, k_cache, v_cache, rows.block_offsets, rows.q_start_loc, rows.q_seqlens,
                       rows.position_ids, rows.kv_seqlens)
        return ragged_attention(query, k_cache, v_cache, rows.block_offsets, rows.q_start_loc, rows.q_seqlens,
                                rows.kv_seqlens, self.scale, max_q_len=rows.max_q_len, zero_padding=rows.zero_padding)
