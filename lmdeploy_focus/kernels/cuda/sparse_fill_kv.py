"""Sparse KV fill: write the K/V rows of the processed tokens at arbitrary positions of their sequence.

Under delayed cache (spec §2.2) a step recomputes only some positions of the diffusion block, in
any order, so the new rows are not "the last q_len positions" that upstream's fill assumes. Every
row carries its own absolute position and its page is looked up per row: a block may straddle
pages (the reference fork assumed the whole block lies in one page and silently corrupted the
cache otherwise, spec §10).

Semantics: ``lmdeploy_focus.kernels.default.fill_kv_cache(..., positions_in_seq=...)``.
"""
import torch
import triton
import triton.language as tl

# Caches holding quantised values would also need scales/zeros written; this path has none.
QUANTISED_CACHE_DTYPES = frozenset(
    getattr(torch, name) for name in ('int8', 'uint8', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3fnuz',
                                      'float8_e5m2fnuz', 'float8_e8m0fnu') if hasattr(torch, name))

# Rows per program: enough to keep loads in flight, small enough for a ragged tail to waste little.
_ROWS_PER_PROGRAM = 16


def reject_quantised_cache(*caches: torch.Tensor) -> None:
    for cache in caches:
        if cache.dtype in QUANTISED_CACHE_DTYPES:
            raise NotImplementedError(f'KV cache dtype {cache.dtype} is quantised; the delayed-cache kernels '
                                      'support only unquantised caches (quant_policy 0)')


@triton.jit
def _owning_sequence(rows, q_start_loc_ptr, q_seqlens_ptr, batch_size, SEARCH_STEPS: tl.constexpr):
    """Sequence that owns each ragged row, and whether any sequence owns it (padding rows: no).

    Binary search for the first sequence whose end (start + q_len) lies past the row, done on
    device so the launch needs no host-built row->sequence map. Valid because LMDeploy packs
    sequences in batch order (ends non-decreasing; gaps between sequences are allowed).
    """
    lo = tl.zeros_like(rows)
    hi = tl.zeros_like(rows) + batch_size
    for _ in tl.static_range(SEARCH_STEPS):
        searching = lo < hi
        mid = (lo + hi) // 2
        end = tl.load(q_start_loc_ptr + mid, mask=searching, other=0) + tl.load(
            q_seqlens_ptr + mid, mask=searching, other=0)
        past = searching & (end <= rows)
        lo = tl.where(past, mid + 1, lo)
        hi = tl.where(searching & (end > rows), mid, hi)
    found = lo < batch_size
    start = tl.load(q_start_loc_ptr + lo, mask=found, other=0)
    length = tl.load(q_seqlens_ptr + lo, mask=found, other=0)
    owned = found & (rows >= start) & (rows < start + length)
    return lo, owned


@triton.jit
def _copy_rows_to_pages(src_ptr, cache_ptr, rows, pages, slots, kv_head, valid, stride_st, stride_sh, stride_sd,
                        stride_cp, stride_cs, stride_ch, stride_cd, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """cache[pages[i], slots[i], kv_head, :] = src[rows[i], kv_head, :] for every valid i."""
    dims = tl.arange(0, BLOCK_D)
    mask = valid[:, None] & (dims[None, :] < HEAD_DIM)
    src = src_ptr + rows[:, None] * stride_st + kv_head * stride_sh + dims[None, :] * stride_sd
    dst = (cache_ptr + pages[:, None] * stride_cp + slots[:, None] * stride_cs + kv_head * stride_ch +
           dims[None, :] * stride_cd)
    tl.store(dst, tl.load(src, mask=mask).to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sparse_fill_kv_kernel(
        k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, block_offsets_ptr, q_start_loc_ptr, q_seqlens_ptr, positions_ptr,
        num_rows, batch_size,
        stride_kt, stride_kh, stride_kd, stride_vt, stride_vh, stride_vd,
        stride_kcp, stride_kcs, stride_kch, stride_kcd, stride_vcp, stride_vcs, stride_vch, stride_vcd,
        stride_bob, stride_pos,
        PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_ROWS: tl.constexpr, SEARCH_STEPS: tl.constexpr):
    """Program (row tile, kv head): copy BLOCK_ROWS rows of that head into their pages."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    kv_head = tl.program_id(1)
    seq, owned = _owning_sequence(rows, q_start_loc_ptr, q_seqlens_ptr, batch_size, SEARCH_STEPS)
    valid = owned & (rows < num_rows)
    position = tl.load(positions_ptr + rows * stride_pos, mask=valid, other=0).to(tl.int64)
    # Page per row: rows of one sequence may land in different pages.
    pages = tl.load(block_offsets_ptr + seq.to(tl.int64) * stride_bob + position // PAGE_SIZE, mask=valid,
                    other=0).to(tl.int64)
    slots = position % PAGE_SIZE
    rows = rows.to(tl.int64)
    _copy_rows_to_pages(k_ptr, k_cache_ptr, rows, pages, slots, kv_head, valid, stride_kt, stride_kh, stride_kd,
                        stride_kcp, stride_kcs, stride_kch, stride_kcd, HEAD_DIM, BLOCK_D)
    _copy_rows_to_pages(v_ptr, v_cache_ptr, rows, pages, slots, kv_head, valid, stride_vt, stride_vh, stride_vd,
                        stride_vcp, stride_vcs, stride_vch, stride_vcd, HEAD_DIM_V, BLOCK_DV)


def sparse_fill_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         block_offsets: torch.Tensor, q_start_loc: torch.Tensor, q_seqlens: torch.Tensor,
                         positions_in_seq: torch.Tensor) -> None:
    """Write ``k``/``v`` rows into the paged caches at ``positions_in_seq`` (in place, no host sync).

    Args:
        k, v: ``[num_rows, kv_heads, head_dim]`` (``v`` may have its own head_dim); sequence ``b``
            owns rows ``q_start_loc[b] : q_start_loc[b] + q_seqlens[b]``. Sequences must be packed
            in batch order (ends non-decreasing); rows owned by no sequence are ignored.
        k_cache, v_cache: ``[num_pages, page_size, kv_heads, head_dim]``, unquantised, of ``k``'s / ``v``'s dtype.
        block_offsets: ``[batch, max_pages_per_seq]`` page table.
        q_start_loc, q_seqlens: ``[batch]`` int.
        positions_in_seq: ``[num_rows]`` int, absolute position of each row in its sequence, any
            order. Two rows of one sequence with the same position: which one lands is unspecified.
    """
    reject_quantised_cache(k_cache, v_cache)
    if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype:
        # the engine's cache has the model's dtype; a cast on store (bf16 rows into an fp32 cache at page 64)
        # fails to compile under Triton 3.6, and the ragged attention refuses mixed dtypes anyway
        raise ValueError(f'k/v ({k.dtype}, {v.dtype}) and their caches ({k_cache.dtype}, {v_cache.dtype}) must have '
                         f'the same dtype')
    num_rows, num_kv_heads, head_dim = k.shape
    head_dim_v = v.size(-1)
    page_size = k_cache.size(1)
    assert v.shape[:2] == k.shape[:2], 'k and v must have the same rows and kv heads'
    assert k_cache.shape[1:] == (page_size, num_kv_heads, head_dim), 'k_cache shape does not match k'
    assert v_cache.shape[1:] == (page_size, num_kv_heads, head_dim_v), 'v_cache shape does not match v'
    assert positions_in_seq.shape == (num_rows, ), 'one position per row'
    # The search indexes these directly (pointer + sequence index).
    assert q_start_loc.is_contiguous() and q_seqlens.is_contiguous(), 'q_start_loc/q_seqlens must be contiguous'
    batch_size = q_seqlens.numel()
    if num_rows == 0 or batch_size == 0:
        return
    grid = (triton.cdiv(num_rows, _ROWS_PER_PROGRAM), num_kv_heads)
    _sparse_fill_kv_kernel[grid](
        k, v, k_cache, v_cache, block_offsets, q_start_loc, q_seqlens, positions_in_seq,
        num_rows, batch_size,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        block_offsets.stride(0), positions_in_seq.stride(0),
        PAGE_SIZE=page_size,
        HEAD_DIM=head_dim,
        HEAD_DIM_V=head_dim_v,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_DV=triton.next_power_of_2(head_dim_v),
        BLOCK_ROWS=_ROWS_PER_PROGRAM,
        # halvings that narrow candidates 0..batch_size to one; a compile-time bound (an unrolled
        # loop, which Triton's CPU interpreter also runs) with one variant per power of two of B
        SEARCH_STEPS=batch_size.bit_length(),
        num_warps=4)
