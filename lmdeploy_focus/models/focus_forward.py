"""The decode forward of a FOCUS step, written once for any block-diffusion decoder.

Same computation as the model's own forward except inside the eviction layer, where the rows are
compacted between the K/V write and the attention; the deeper layers run upstream's decoder layers
unchanged on the kept rows. A model plugs in through a :class:`DecoderParts` adapter that names
its embedding, rotary embedding, layers and final norm, and splits one layer into "attention
inputs" and "attention output + MLP" (the two halves around the eviction).
"""
from typing import Protocol

import torch
from torch.profiler import record_function

from ..kernels.paged_ops import ragged_attention, sparse_fill_kv
from .focus_eviction import compact_step, focus_keep_rows


class DecoderParts(Protocol):
    layers: list
    scale: float

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...  # [1, N] -> [1, N, D]

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attention_inputs(self, layer, hidden, residual, rotary) -> tuple: ...  # -> q, k, v, residual

    def attention_output_and_mlp(self, layer, attn_out, residual) -> tuple: ...  # -> hidden, residual

    def final_norm(self, hidden, residual) -> torch.Tensor: ...


def focus_decode_forward(parts: DecoderParts, step, input_ids, position_ids, past_key_values,
                         attn_metadata) -> torch.Tensor:
    """Hidden states ``[1, kept, D]`` of the rows kept past the eviction layer."""
    eviction_layer = step.focus.config.eviction_layer
    hidden = parts.embed(input_ids)
    cos, sin = parts.rotary(hidden, position_ids)
    residual = None
    for idx, layer in enumerate(parts.layers):
        if idx != eviction_layer:
            hidden, residual = layer(hidden, rotary_pos_emb=(cos, sin), past_key_value=past_key_values[idx],
                                     residual=residual, attn_metadata=attn_metadata)
            continue
        with record_function('focus.eviction_layer'):
            hidden, residual, cos, sin = _evict_in_layer(parts, layer, step, hidden, residual, cos, sin,
                                                         past_key_values[idx], attn_metadata)
    with record_function('focus.final_norm'):
        return parts.final_norm(hidden, residual)


def _evict_in_layer(parts, layer, step, hidden, residual, cos, sin, past_key_value, attn_metadata):
    """The eviction layer: K/V of every processed row, selection, compaction, attention of the kept."""
    q, k, v, residual = parts.attention_inputs(layer, hidden, residual, (cos, sin))
    k_cache, v_cache = past_key_value[0], past_key_value[1]
    meta = step.meta
    # K/V of every processed row first: evicted tokens still get fresh layer-1 K/V.
    sparse_fill_kv(k, v, k_cache, v_cache, attn_metadata.block_offsets, meta.q_start_loc, meta.q_seqlens,
                   meta.position_ids, meta.kv_seqlens)
    runtime_mark = step.mark_phase
    if runtime_mark:
        runtime_mark('layers_0_1')
    with record_function('focus.select'):
        keep = focus_keep_rows(step, q, k, parts.scale)
    with record_function('focus.compact'):
        q, residual, cos, sin = compact_step(step, keep, [q, residual[0], cos, sin])
    residual = residual[None]
    if runtime_mark:
        runtime_mark('eviction')
    meta = step.meta
    attn = ragged_attention(q, k_cache, v_cache, attn_metadata.block_offsets, meta.q_start_loc, meta.q_seqlens,
                            meta.kv_seqlens, parts.scale, max_q_len=meta.max_q_seqlen)
    hidden, residual = parts.attention_output_and_mlp(layer, attn.reshape(1, q.size(0), -1), residual)
    return hidden, residual, cos, sin
