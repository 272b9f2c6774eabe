"""Delayed-cache paged ops: the Triton kernels on CUDA tensors, the torch reference elsewhere.

The reference (:mod:`lmdeploy_focus.kernels.default.paged_attention`) is the CPU path, so model code
written against these two functions runs unchanged in the CPU harness.
"""
import torch

from .default.paged_attention import fill_kv_cache, paged_attention


def sparse_fill_kv(k, v, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, positions, kv_seqlens) -> None:
    """Write K/V rows of the processed tokens at their absolute ``positions`` (in place)."""
    if k.is_cuda:
        from .cuda.sparse_fill_kv import sparse_fill_kv_cache
        sparse_fill_kv_cache(k, v, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, positions)
        return
    fill_kv_cache(k, v, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, kv_seqlens,
                  positions_in_seq=positions)


def ragged_attention(q, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, kv_seqlens, scale,
                     max_q_len: int, zero_padding: bool = False) -> torch.Tensor:
    """Non-causal attention of ragged queries over keys ``0 .. kv_seqlens[b]-1`` of their sequence.

    Rows owned by no sequence: zeros with ``zero_padding`` (always on the reference), else arbitrary on CUDA."""
    if q.is_cuda:
        from .cuda.ragged_paged_attention import ragged_paged_attention
        return ragged_paged_attention(q, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, kv_seqlens,
                                      scale, max_q_len=max_q_len, zero_padding=zero_padding)
    return paged_attention(q, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, kv_seqlens, scale)
