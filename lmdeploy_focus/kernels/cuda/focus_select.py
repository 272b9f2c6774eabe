"""FOCUS targets and selection: how many candidates each sequence keeps, and which ones.

Semantics: ``focus_targets`` and ``select_kept`` of ``lmdeploy_focus.kernels.default.focus`` (spec
§3.4–3.6), bit for bit: same fp32 product for the target, same fp64 μ+σ inequality.

Selection runs one program per sequence on a ``BLOCK_L`` vector of its rows. Everything that
relates two rows (top-T rank, candidate rank, "next candidate is kept and adjacent") is an
``L x L`` comparison reduced in registers, so no flag is read back from memory it was just
written to (the reference fork did that, an intra-program store→load hazard, spec §10), and the
top-T is one rank computation rather than ``L`` serial arg-max rounds.
"""
import torch
import triton
import triton.language as tl

from ..default.focus import CEIL_SLACK, POLICIES

_TARGETS_BLOCK = 128


@triton.jit
def _target(n, avg, alpha, CEIL_SLACK: tl.constexpr):
    """min(n, max(1, ceil(max(avg, 1) * alpha))), 0 if n <= 0; the same fp32 steps as the reference."""
    expected = tl.maximum(avg.to(tl.float32), 1.0) * alpha
    wanted = tl.maximum(tl.ceil(expected * CEIL_SLACK), 1.0).to(tl.int64)
    n = n.to(tl.int64)
    return tl.where(n > 0, tl.minimum(n, wanted), 0)


@triton.jit
def _focus_targets_kernel(num_candidates_ptr, avg_ptr, out_ptr, alpha, batch_size, CEIL_SLACK: tl.constexpr,
                          BLOCK: tl.constexpr):
    seqs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = seqs < batch_size
    n = tl.load(num_candidates_ptr + seqs, mask=mask, other=0)
    avg = tl.load(avg_ptr + seqs, mask=mask, other=1.0)
    tl.store(out_ptr + seqs, _target(n, avg, alpha, CEIL_SLACK), mask=mask)


def cuda_focus_targets(num_candidates: torch.Tensor, avg_decoded: torch.Tensor, alpha: float) -> torch.Tensor:
    """int64 [B] targets (see the reference); no host sync."""
    assert num_candidates.is_contiguous() and avg_decoded.is_contiguous()
    batch_size = num_candidates.numel()
    out = torch.empty(batch_size, dtype=torch.int64, device=num_candidates.device)
    if batch_size == 0:
        return out
    _focus_targets_kernel[(triton.cdiv(batch_size, _TARGETS_BLOCK), )](
        num_candidates, avg_decoded, out, float(alpha), batch_size,
        CEIL_SLACK=CEIL_SLACK, BLOCK=_TARGETS_BLOCK, num_warps=4)
    return out


@triton.jit
def _count(flags, axis=None):
    return tl.sum(flags.to(tl.int32), axis=axis)


@triton.jit
def _select_kept_kernel(delta_ptr, candidate_ptr, block_pos_ptr, q_start_loc_ptr, q_seqlens_ptr, targets_ptr,
                        progress_ptr, keep_ptr, LEFTMOST: tl.constexpr, BLOCK_L: tl.constexpr):
    """Program b: retain flags of the rows of sequence b."""
    seq = tl.program_id(0)
    start = tl.load(q_start_loc_ptr + seq).to(tl.int64)
    length = tl.load(q_seqlens_ptr + seq)
    progress = tl.load(progress_ptr + seq)
    slot = tl.arange(0, BLOCK_L)
    in_seq = slot < length
    rows = start + slot
    cand = in_seq & (tl.load(candidate_ptr + rows, mask=in_seq, other=0) != 0)
    pos = tl.load(block_pos_ptr + rows, mask=in_seq, other=-1).to(tl.int32)
    n = _count(cand)
    target = tl.load(targets_ptr + seq).to(tl.int32)
    # Pair tiles are [j, k]: row j compared with every row k.
    earlier = slot[None, :] < slot[:, None]  # k left of j

    if LEFTMOST:
        chosen = cand & (_count(cand[None, :] & earlier, axis=1) < target)
    else:
        delta = tl.load(delta_ptr + rows, mask=cand, other=0.0).to(tl.float64)
        d_j = delta[:, None]
        d_k = delta[None, :]
        beats = cand[None, :] & ((d_k > d_j) | ((d_k == d_j) & earlier))
        top = cand & (_count(beats, axis=1) < target)
        # delta >= mean + population std, as n*D^2 >= sum(D^2) with D = n*delta - sum(delta) >= 0
        nf = n.to(tl.float64)
        dev = nf * delta - tl.sum(tl.where(cand, delta, 0.0))
        spread = tl.sum(tl.where(cand, dev * dev, 0.0))
        above = cand & (dev >= 0) & (nf * dev * dev >= spread)
        chosen = tl.where(_count(above) >= target, above, top)
    evict = (target > 0) & (n > target)
    chosen = tl.where(evict, chosen, cand)

    # (1) left neighbour: a kept candidate at pos + 1 is the next candidate (positions ascend).
    right_kept = _count(chosen[None, :] & (pos[None, :] == pos[:, None] + 1), axis=1) > 0
    chosen = chosen | (cand & right_kept)
    # (2) never empty
    chosen = tl.where(_count(chosen) > 0, chosen, cand)
    # (3) gap-fill between the block progress and the rightmost kept candidate
    rightmost = tl.max(tl.where(chosen, pos, -1))
    chosen = chosen | (cand & (pos > progress) & (pos < rightmost))

    keep = chosen | (in_seq & (cand == 0))
    tl.store(keep_ptr + rows, keep, mask=in_seq)


def cuda_select_kept(delta: torch.Tensor, candidate: torch.Tensor, block_pos: torch.Tensor, q_start_loc: torch.Tensor,
                     q_seqlens: torch.Tensor, targets: torch.Tensor, progress: torch.Tensor, policy: str,
                     max_q_len: int) -> torch.Tensor:
    """bool [N] retain flags (see the reference); no host sync.

    ``delta`` is read as fp32 or wider (only candidate rows); ``q_seqlens <= max_q_len`` (static
    bound, longer sequences are cut); rows of a sequence in ascending, distinct block positions.
    """
    if policy not in POLICIES:
        raise ValueError(f'unknown FOCUS selection policy {policy!r}; expected one of {POLICIES}')
    num_rows = candidate.numel()
    for t in (delta, candidate, block_pos, q_start_loc, q_seqlens, targets, progress):
        assert t.is_contiguous(), 'select_kept inputs must be contiguous'
    assert delta.shape == (num_rows, ) and block_pos.shape == (num_rows, ), 'one delta and position per row'
    keep = torch.zeros(num_rows, dtype=torch.bool, device=candidate.device)
    batch_size = q_seqlens.numel()
    if num_rows == 0 or batch_size == 0:
        return keep
    _select_kept_kernel[(batch_size, )](
        delta, candidate, block_pos, q_start_loc, q_seqlens, targets, progress, keep,
        LEFTMOST=policy == 'leftmost',
        BLOCK_L=max(16, triton.next_power_of_2(max_q_len)),
        num_warps=4,
        enable_fp_fusion=False)  # no FMA in the μ+σ sums: the same roundings as the reference
    return keep
