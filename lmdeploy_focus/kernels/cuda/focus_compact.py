"""FOCUS compaction layout: where each kept row goes and the per-sequence view after eviction.

Semantics: ``lmdeploy_focus.kernels.default.focus.kept_layout`` (spec §3.7 steps 4–5), no host sync:
every output is sized by the static row count ``N`` and batch size ``B``, so the caller can
keep running the static shape (CUDA graphs) and read ``total`` only if it wants to slice.

Two launches:

1. one program per sequence counts its kept rows, finds its rightmost kept position, and marks
   its kept rows in a per-row flag buffer (rows owned by no sequence stay 0);
2. a single program scans the batch (cumsum of the counts → ``q_start_loc``, ``kv_seqlens``,
   ``progress``) and then the rows (cumsum of the flags → each row's destination), in chunks
   carried from one to the next. ``N <= B * L`` rows is a few thousand elements: one program is
   cheaper than a multi-program scan. The chunk counts are compile-time constants rounded up
   to a power of two (a handful of variants; Triton's interpreter, which runs the CPU tests,
   cannot loop over a runtime bound), extra chunks are fully masked.

Kept rows are numbered in row order, which is the sequence order because sequences are packed
in batch order (LMDeploy's layout; the sparse KV fill assumes it too). The row gather itself is
``torch.index_select`` on ``src_row`` (already one kernel for any row width; ``sparse_step``).
"""
import torch
import triton
import triton.language as tl

from ..default.focus import KeptLayout

_SCAN_BLOCK = 1024


@triton.jit
def _kept_per_sequence_kernel(keep_ptr, block_pos_ptr, q_start_loc_ptr, q_seqlens_ptr, counts_ptr, rightmost_ptr,
                              flags_ptr, BLOCK_L: tl.constexpr):
    seq = tl.program_id(0)
    start = tl.load(q_start_loc_ptr + seq).to(tl.int64)
    length = tl.load(q_seqlens_ptr + seq)
    slot = tl.arange(0, BLOCK_L)
    in_seq = slot < length
    rows = start + slot
    kept = in_seq & (tl.load(keep_ptr + rows, mask=in_seq, other=0) != 0)
    pos = tl.load(block_pos_ptr + rows, mask=in_seq, other=-1).to(tl.int64)
    tl.store(counts_ptr + seq, tl.sum(kept.to(tl.int64)))
    tl.store(rightmost_ptr + seq, tl.max(tl.where(kept, pos, -1)))
    tl.store(flags_ptr + rows, kept.to(tl.int32), mask=in_seq)


@triton.jit
def _kept_layout_kernel(counts_ptr, rightmost_ptr, history_ptr, progress_ptr, flags_ptr, q_start_loc_ptr,
                        kv_seqlens_ptr, new_progress_ptr, total_ptr, src_row_ptr, batch_size, num_rows,
                        BLOCK: tl.constexpr, SEQ_CHUNKS: tl.constexpr, ROW_CHUNKS: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    # Sequences: exclusive cumsum of the counts, and the view up to the new block progress.
    kept_total = tl.zeros([], dtype=tl.int64)
    for chunk in range(SEQ_CHUNKS):
        seqs = chunk * BLOCK + offs
        mask = seqs < batch_size
        counts = tl.load(counts_ptr + seqs, mask=mask, other=0)
        rightmost = tl.load(rightmost_ptr + seqs, mask=mask, other=-1)
        progress = tl.load(progress_ptr + seqs, mask=mask, other=-1).to(tl.int64)
        history = tl.load(history_ptr + seqs, mask=mask, other=0).to(tl.int64)
        tl.store(q_start_loc_ptr + seqs, kept_total + tl.cumsum(counts, 0) - counts, mask=mask)
        new_progress = tl.maximum(progress, rightmost)
        tl.store(kv_seqlens_ptr + seqs, history + new_progress + 1, mask=mask)
        tl.store(new_progress_ptr + seqs, new_progress, mask=mask)
        kept_total += tl.sum(counts)
    tl.store(total_ptr, kept_total)
    # Rows: kept rows first in row order, then every other row in row order (a permutation).
    kept_before = tl.zeros([], dtype=tl.int64)
    for chunk in range(ROW_CHUNKS):
        rows = chunk * BLOCK + offs
        mask = rows < num_rows
        flags = tl.load(flags_ptr + rows, mask=mask, other=0).to(tl.int64)
        kept_here = kept_before + tl.cumsum(flags, 0) - flags
        dest = tl.where(flags != 0, kept_here, kept_total + rows - kept_here)
        tl.store(src_row_ptr + dest, rows.to(tl.int64), mask=mask)
        kept_before += tl.sum(flags)


def _chunks(size: int, block: int) -> int:
    """Chunks of ``block`` covering ``size``, rounded up to a power of two (few compiled variants)."""
    return triton.next_power_of_2(triton.cdiv(size, block)) if size else 0


def cuda_kept_layout(keep: torch.Tensor, q_start_loc: torch.Tensor, q_seqlens: torch.Tensor, block_pos: torch.Tensor,
                     history: torch.Tensor, progress: torch.Tensor, max_q_len: int) -> KeptLayout:
    """The kept layout (see the reference); no host sync.

    Sequences must be packed in batch order (row ranges ascending with ``b``; gaps allowed) and
    ``q_seqlens <= max_q_len`` (static bound, longer sequences are cut).
    """
    num_rows = keep.numel()
    batch_size = q_seqlens.numel()
    for t in (keep, q_start_loc, q_seqlens, block_pos, history, progress):
        assert t.is_contiguous(), 'kept_layout inputs must be contiguous'
    device = keep.device
    long = dict(dtype=torch.int64, device=device)
    # Only the flags need zeros (rows no sequence owns); launch 1 writes counts / rightmost of all.
    flags = torch.zeros(num_rows, dtype=torch.int32, device=device)
    layout = KeptLayout(src_row=torch.empty(num_rows, **long),
                        q_seqlens=torch.empty(batch_size, **long),
                        q_start_loc=torch.empty(batch_size, **long),
                        total=torch.empty((), **long),
                        kv_seqlens=torch.empty(batch_size, **long),
                        rightmost=torch.empty(batch_size, **long),
                        progress=torch.empty(batch_size, **long))
    counts, rightmost = layout.q_seqlens, layout.rightmost
    if num_rows > 0 and batch_size > 0:
        _kept_per_sequence_kernel[(batch_size, )](keep, block_pos, q_start_loc, q_seqlens, counts, rightmost, flags,
                                                  BLOCK_L=triton.next_power_of_2(max(max_q_len, 1)),
                                                  num_warps=1)
    else:  # no rows: nothing kept anywhere
        counts.zero_()
        rightmost.fill_(-1)
        layout.total.zero_()
    if max(num_rows, batch_size) > 0:
        block = min(_SCAN_BLOCK, triton.next_power_of_2(max(num_rows, batch_size)))
        _kept_layout_kernel[(1, )](counts, rightmost, history, progress, flags, layout.q_start_loc,
                                   layout.kv_seqlens, layout.progress, layout.total, layout.src_row, batch_size,
                                   num_rows,
                                   BLOCK=block,
                                   SEQ_CHUNKS=_chunks(batch_size, block),
                                   ROW_CHUNKS=_chunks(num_rows, block),
                                   num_warps=4)
    return layout
