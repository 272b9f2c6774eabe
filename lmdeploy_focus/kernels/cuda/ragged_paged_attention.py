"""Ragged paged attention: DLLM decode where every sequence brings its own number of query tokens.

Delayed cache and FOCUS recompute a different subset of the diffusion block per sequence, so the
step's queries are ragged (``q_len[b] <= L``), while upstream's decode kernel assumes exactly ``L``
dense rows per sequence. Semantics: ``lmdeploy_focus.kernels.default.paged_attention`` with
``causal_block_size=None`` (every query of ``b`` sees keys ``0 .. kv_len[b]-1``).

Work split, with no host sync and no host-built tile map: a *row* is a (query token, query head of
one KV group) pair of one sequence, so sequence ``b`` has ``G * q_len[b]`` rows per KV head. The
grid is ``(cdiv(G * max_q_len, BLOCK_M), kv_heads, batch)`` where ``max_q_len`` is the static block
length; a program packs ``BLOCK_M`` rows of one sequence and one KV head (all of them read the same
keys, so each K/V tile feeds ``BLOCK_M`` rows) and programs past ``G * q_len[b]`` exit at once.
The launch therefore depends on shapes and config only (CUDA-graph friendly, unlike the fork's
per-step host tile map, spec §10). The tile index is the fastest grid axis so that the tiles of one
(sequence, KV head) run together and share its K/V through L2.

Dtypes: fp16 / bf16 (tensor-core products, fp32 accumulation) and fp32. fp32 inputs are computed in
true fp32 (``tl.dot(..., input_precision="ieee")``; Triton's default on NVIDIA is TF32, which keeps
10 mantissa bits of every operand), so a float32 engine matches an fp32 reference to fp32 rounding.
That path exists for equivalence checks on tiny models, not for speed.
"""
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .sparse_fill_kv import reject_quantised_cache

_LOG2E = math.log2(math.e)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class AttentionTiles(NamedTuple):
    """Launch configuration of the ragged kernel."""
    block_m: int  # rows (query token x head-in-group) per program
    block_n: int  # keys per streamed K/V tile; divides page_size so a tile never crosses pages
    num_warps: int
    num_stages: int


def choose_tiles(max_q_len: int,
                 group: int,
                 head_dim: int,
                 page_size: int,
                 dtype: torch.dtype = torch.bfloat16) -> AttentionTiles:
    """Tiles for Hopper from static shapes and the dtype only (the same for every step of a config)."""
    rows = max_q_len * group
    num_stages = 3 if head_dim <= 128 else 2
    if dtype == torch.float32:
        # "ieee" products run on FMA units (no tensor cores), with operands and accumulator in
        # registers: 16 x 16 tiles over 8 warps compile for sm_90 without register spills at head_dim
        # 64 and 128 (32 x 32 / 4 warps spill 2 KB at 128); 25 KiB smem at head_dim 128.
        return AttentionTiles(block_m=16, block_n=16, num_warps=8, num_stages=num_stages)
    # 64 rows = one warpgroup MMA. On H100 (SDAR-8B shape, L 32, G 4) 64x64/4 warps beat 32 and 128
    # rows for both full-block and q_len-8 steps (benchmark/kernels/bench_ragged_attention.py --sweep).
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    # Largest power of two dividing the page, capped: 64 keys x 128 dims keeps 3 stages in smem.
    block_n = min(page_size & -page_size, 64)
    return AttentionTiles(block_m=block_m, block_n=block_n, num_warps=4, num_stages=num_stages)


def dot_input_precision(dtype: torch.dtype) -> str | None:
    """``tl.dot`` input precision: "ieee" (true fp32 products) for fp32, Triton's default otherwise."""
    return 'ieee' if dtype == torch.float32 else None


@triton.jit
def _attend_kv_tile(
        acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, page_row_ptr, start_n, kv_len, kv_head,
        stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs, stride_vh, stride_vd,
        qk_scale_log2,
        PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, PARTIAL: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    """One online-softmax step over keys ``start_n .. start_n + BLOCK_N`` (one page, BLOCK_N | PAGE_SIZE).

    ``PARTIAL``: the tile reaches past ``kv_len``; those keys get -inf scores and zero values (the
    slots past kv_len may hold anything, NaN included). ``DOT_PRECISION``: see
    :func:`dot_input_precision` (None: Triton's default, the 16-bit path).
    """
    page = tl.load(page_row_ptr + start_n // PAGE_SIZE).to(tl.int64)
    slots = start_n % PAGE_SIZE + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    dims_v = tl.arange(0, BLOCK_DV)
    key_ok = (start_n + tl.arange(0, BLOCK_N)) < kv_len
    k_mask = dims[:, None] < HEAD_DIM
    v_mask = dims_v[None, :] < HEAD_DIM_V
    if PARTIAL:
        k_mask = k_mask & key_ok[None, :]
        v_mask = v_mask & key_ok[:, None]
    # K tile as [D, N] so the score MMA needs no transpose.
    k = tl.load(k_cache_ptr + page * stride_kp + slots[None, :] * stride_ks + kv_head * stride_kh +
                dims[:, None] * stride_kd,
                mask=k_mask,
                other=0.0)
    scores = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale_log2  # log2 domain: exp2 below
    if PARTIAL:
        scores = tl.where(key_ok[None, :], scores, float('-inf'))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    p = tl.exp2(scores - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    v = tl.load(v_cache_ptr + page * stride_vp + slots[:, None] * stride_vs + kv_head * stride_vh +
                dims_v[None, :] * stride_vd,
                mask=v_mask,
                other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, m_new, l_i


@triton.jit
def _ragged_paged_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_offsets_ptr, q_start_loc_ptr, q_seqlens_ptr, kv_seqlens_ptr,
        qk_scale_log2,
        stride_qt, stride_qh, stride_qd,
        stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs, stride_vh, stride_vd,
        stride_ot, stride_oh, stride_od, stride_bob,
        GROUP: tl.constexpr, PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DOT_PRECISION: tl.constexpr):
    """Program (row tile, kv head, sequence): BLOCK_M (token, head-in-group) rows over all keys."""
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.program_id(2)
    num_rows = tl.load(q_seqlens_ptr + seq) * GROUP
    first_row = tile * BLOCK_M
    if first_row >= num_rows:  # tile beyond this sequence's queries (grid sized for max_q_len)
        return
    q_start = tl.load(q_start_loc_ptr + seq).to(tl.int64)
    kv_len = tl.load(kv_seqlens_ptr + seq)

    rows = first_row + tl.arange(0, BLOCK_M)
    row_ok = rows < num_rows
    token = q_start + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd,
                mask=row_ok[:, None] & (dims[None, :] < HEAD_DIM),
                other=0.0)

    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    page_row_ptr = block_offsets_ptr + seq.to(tl.int64) * stride_bob
    # Full tiles without key masks, then at most one partial tile.
    full_end = (kv_len // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, page_row_ptr, start_n, kv_len,
                                        kv_head, stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs,
                                        stride_vh, stride_vd, qk_scale_log2, PAGE_SIZE, HEAD_DIM, HEAD_DIM_V,
                                        BLOCK_D, BLOCK_DV, BLOCK_N, PARTIAL=False, DOT_PRECISION=DOT_PRECISION)
    if full_end < kv_len:
        acc, m_i, l_i = _attend_kv_tile(acc, m_i, l_i, q, k_cache_ptr, v_cache_ptr, page_row_ptr, full_end, kv_len,
                                        kv_head, stride_kp, stride_ks, stride_kh, stride_kd, stride_vp, stride_vs,
                                        stride_vh, stride_vd, qk_scale_log2, PAGE_SIZE, HEAD_DIM, HEAD_DIM_V,
                                        BLOCK_D, BLOCK_DV, BLOCK_N, PARTIAL=True, DOT_PRECISION=DOT_PRECISION)

    # kv_len == 0: no key was seen, l_i == 0 and acc == 0 -> the output is zero, not NaN.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    dims_v = tl.arange(0, BLOCK_DV)
    tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims_v[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (dims_v[None, :] < HEAD_DIM_V))


def ragged_paged_attention(q: torch.Tensor,
                           k_cache: torch.Tensor,
                           v_cache: torch.Tensor,
                           block_offsets: torch.Tensor,
                           q_start_loc: torch.Tensor,
                           q_seqlens: torch.Tensor,
                           kv_seqlens: torch.Tensor,
                           scale: float,
                           max_q_len: int,
                           out: torch.Tensor | None = None,
                           *,
                           zero_padding: bool = False,
                           tiles: AttentionTiles | None = None) -> torch.Tensor:
    """Non-causal attention of ragged queries over each sequence's paged keys (no host sync).

    Args:
        q: ``[num_rows, heads, head_dim]`` fp16 / bf16 / fp32 (fp32: true fp32 products, no
            TF32); sequence ``b`` owns rows
            ``q_start_loc[b] : q_start_loc[b] + q_seqlens[b]`` (``q_len`` may be 0).
        k_cache, v_cache: ``[num_pages, page_size, kv_heads, head_dim]``, unquantised, ``q``'s dtype;
            query head ``h`` reads kv head ``h // (heads // kv_heads)``.
        block_offsets: ``[batch, max_pages_per_seq]`` page table.
        q_start_loc, q_seqlens, kv_seqlens: ``[batch]`` int (``kv_len == 0`` gives zero rows).
        scale: softmax scale applied to ``q·k``.
        max_q_len: static upper bound of ``q_seqlens`` (the diffusion block length); it sizes the
            grid, so rows past it are not computed. Must not depend on the step's data.
        out: optional ``[num_rows, heads, v_head_dim]`` destination.
        zero_padding: with ``out`` None, the rows owned by no sequence are zeros (one memset), not left
            uninitialised: a MoE model's padding rows then route to one fixed set of experts.
        tiles: launch configuration override (benchmarks); default :func:`choose_tiles` for ``q``'s dtype.

    Returns:
        ``out``: rows of every sequence written; rows owned by no sequence are left untouched
        (uninitialised when ``out`` is None unless ``zero_padding``; the reference zeroes them).
    """
    assert isinstance(max_q_len, int) and max_q_len > 0, 'max_q_len must be a positive Python int'
    reject_quantised_cache(k_cache, v_cache)
    num_rows, num_heads, head_dim = q.shape
    num_pages, page_size, num_kv_heads, _ = k_cache.shape
    head_dim_v = v_cache.size(-1)
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f'q must be fp16, bf16 or fp32, got {q.dtype}')
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f'k/v cache dtype ({k_cache.dtype}, {v_cache.dtype}) must equal q dtype {q.dtype}')
    assert k_cache.size(-1) == head_dim, 'q and k_cache head_dim differ'
    assert v_cache.shape[:3] == k_cache.shape[:3], 'k_cache and v_cache pages differ'
    assert num_heads % num_kv_heads == 0, 'query heads must be a multiple of kv heads'
    # The kernel indexes these directly (pointer + sequence index).
    assert all(t.is_contiguous() for t in (q_start_loc, q_seqlens, kv_seqlens)), 'per-sequence tensors must be contiguous'
    group = num_heads // num_kv_heads
    if out is None:
        out = (q.new_zeros if zero_padding else q.new_empty)(num_rows, num_heads, head_dim_v)
    elif zero_padding:
        raise ValueError('ragged_paged_attention: zero_padding zeroes the output it allocates; with out given, zero '
                         'its unowned rows yourself')
    assert out.shape == (num_rows, num_heads, head_dim_v), 'out has the wrong shape'
    tiles = tiles or choose_tiles(max_q_len, group, head_dim, page_size, q.dtype)
    assert tiles.block_n >= 16 and page_size % tiles.block_n == 0, \
        f'page_size {page_size} needs a power-of-two divisor >= 16 (got tile {tiles.block_n})'
    batch_size = q_seqlens.numel()
    if num_rows == 0 or batch_size == 0:
        return out
    grid = (triton.cdiv(max_q_len * group, tiles.block_m), num_kv_heads, batch_size)
    _ragged_paged_attention_kernel[grid](
        q, k_cache, v_cache, out, block_offsets, q_start_loc, q_seqlens, kv_seqlens,
        scale * _LOG2E,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *out.stride(), block_offsets.stride(0),
        GROUP=group,
        PAGE_SIZE=page_size,
        HEAD_DIM=head_dim,
        HEAD_DIM_V=head_dim_v,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_DV=triton.next_power_of_2(head_dim_v),
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        DOT_PRECISION=dot_input_precision(q.dtype),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages)
    return out
