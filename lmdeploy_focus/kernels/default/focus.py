"""The FOCUS math (spec §3.2–3.6) in plain torch, batched: the torch twin of the Triton kernels.

Used as the expected output of the kernel tests, as the CPU path of the model, and as the
fallback wherever the Triton kernels do not run. (The reference decode loop of the development
package does not use it: it computes the selection per sequence from the spec itself.) Vectorised over the batch (no Python loop, no
host sync once ``max_q_len`` is given); readability over speed.

Row contract (the ragged layout of a decode step, see ``models/step_state/processing_set.py``):
sequence ``b`` owns rows ``q_start_loc[b] .. q_start_loc[b] + q_seqlens[b] - 1``, in ascending
block position; ``q_seqlens[b] <= max_q_len`` (the block length ``L``). The ``N`` rows passed may
be more than ``sum(q_seqlens)``: rows owned by no sequence are padding, their inputs are ignored
and their outputs are 0 / False. A *candidate* is a masked token of the processing set (spec
§3.1); the others an owned row holds are never evicted.

1. ``focus_targets``: how many candidates a sequence keeps (spec §3.4).
2. ``masked_importance``: attention mass each candidate receives from the candidates of its
   sequence, one layer (spec §3.2). The step's delta is layer 1 minus layer 0.
3. ``select_kept``: the retain flag of every row: selection (§3.5), then enforcement (§3.6).
4. ``kept_layout``: the ragged layout of the kept rows (the step gathers them with ``index_select`` on ``src_row``).
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...config.options import FOCUS_POLICIES as POLICIES

# ceil(max(avg, 1) * alpha) is taken of the fp32 product scaled down by this factor, so that a
# product that lands a rounding error above an integer (2.0000002 * 1.5 = 3.0000002) does not
# bump the target: products within a relative 1e-5 above an integer count as that integer. Real
# fractions are far larger (avg = decoded / steps with steps <= L, so for alpha 1.5 the fraction
# is a multiple of 1 / (2 L)). Two multiplications, no addition: no FMA can change the rounding,
# so the Triton kernel gets the same bits.
CEIL_SLACK = 1.0 - 1e-5


@dataclass
class KeptLayout:
    """Ragged layout of the kept rows (spec §3.7 steps 4–5); all int64, on the input's device."""
    src_row: torch.Tensor  # [N]: new row i holds old row src_row[i]; a permutation of 0..N-1
    q_seqlens: torch.Tensor  # [B]: kept rows per sequence
    q_start_loc: torch.Tensor  # [B]: exclusive cumsum of q_seqlens (sequences concatenated, no gaps)
    total: torch.Tensor  # 0-d: kept rows in all; new rows >= total are padding
    kv_seqlens: torch.Tensor  # [B]: history + the new progress + 1 (keys with deep K/V of this block)
    rightmost: torch.Tensor  # [B]: last kept block position, -1 if none
    progress: torch.Tensor  # [B]: max(progress, rightmost)


class _SequenceRows(NamedTuple):
    """Dense ``[B, Lmax]`` view of ragged rows: ``rows[b, i]`` is row ``i`` of sequence ``b``."""
    rows: torch.Tensor  # int64 [B, Lmax]: a valid row index everywhere (0 where ~valid)
    valid: torch.Tensor  # bool [B, Lmax]


def _max_q_len(q_seqlens: torch.Tensor, max_q_len: int | None) -> int:
    """Width of the dense view; at least 1 so reductions over it are never empty."""
    if max_q_len is None:
        max_q_len = int(q_seqlens.max()) if q_seqlens.numel() else 0  # host sync: pass max_q_len to avoid
    return max(int(max_q_len), 1)


def _sequence_rows(q_start_loc, q_seqlens, max_q_len: int | None) -> _SequenceRows:
    width = _max_q_len(q_seqlens, max_q_len)
    slot = torch.arange(width, device=q_seqlens.device)
    valid = slot[None, :] < q_seqlens.long()[:, None]
    rows = torch.where(valid, q_start_loc.long()[:, None] + slot[None, :], 0)
    return _SequenceRows(rows, valid)


def _candidate_rows(candidate, q_start_loc, q_seqlens, max_q_len: int | None) -> _SequenceRows:
    """Dense view of the candidate rows only, compacted: slot ``j`` is the ``j``-th candidate of ``b``."""
    seq = _sequence_rows(q_start_loc, q_seqlens, max_q_len)
    is_cand = seq.valid & candidate[seq.rows]
    width = seq.rows.size(1)
    # Scatter each candidate's row to its rank; the others go to a spare column that is dropped.
    rank = torch.where(is_cand, is_cand.long().cumsum(1) - 1, width)
    rows = seq.rows.new_zeros(seq.rows.size(0), width + 1).scatter_(1, rank, seq.rows)[:, :width]
    count = is_cand.sum(1)
    valid = torch.arange(width, device=rows.device)[None, :] < count[:, None]
    return _SequenceRows(rows, valid)


def _take(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` for a 1-D ``x``; zeros when ``x`` has no rows (then no slot is valid either)."""
    return x[rows] if x.numel() else x.new_zeros(rows.shape)


def _scatter_rows(values: torch.Tensor, dense: _SequenceRows, out: torch.Tensor) -> torch.Tensor:
    """out[dense.rows[valid]] = values[valid], without a host sync (invalid slots write a spare row)."""
    num_rows = out.size(0)
    index = torch.where(dense.valid, dense.rows, num_rows).flatten()
    spare = torch.cat([out, out.new_zeros(1)])
    spare[index] = values.flatten().to(out.dtype)  # distinct rows, except the dropped spare one
    return spare[:num_rows]


def count_candidates(candidate, q_start_loc, q_seqlens) -> torch.Tensor:
    """int64 [B]: candidate rows owned by each sequence (the ``num_candidates`` of the targets).

    A front on fewer rows than processed leaves the sequences past the cut with ``q_start_loc`` at or past
    the row count and no rows: they count 0, as in the CUDA kernel (the clamp only touches those).
    """
    prefix = torch.cat([candidate.new_zeros(1, dtype=torch.long), candidate.long().cumsum(0)])
    last = prefix.numel() - 1
    start = q_start_loc.long().clamp(max=last)
    end = (q_start_loc.long() + q_seqlens.long()).clamp(max=last)
    return prefix[end] - prefix[start]


def focus_targets(num_candidates: torch.Tensor, avg_decoded: torch.Tensor, alpha: float) -> torch.Tensor:
    """int64 [B]: candidates to keep, ``0`` if none, else ``min(n, max(1, ceil(max(avg, 1) * alpha)))``.

    ``avg_decoded`` is the running average of tokens decoded per step of the current block (spec
    §3.4). The product is taken in fp32 and rounded up with :data:`CEIL_SLACK`.
    """
    n = num_candidates.long()
    avg = avg_decoded.float().clamp(min=1.0)
    # fp32 operands made on the device (a fill, not a host copy): the scalars round to fp32 first
    expected = avg * avg.new_full((), alpha)
    wanted = torch.ceil(expected * avg.new_full((), CEIL_SLACK)).long().clamp(min=1)
    return torch.where(n > 0, torch.minimum(n, wanted), torch.zeros_like(n))


def masked_importance(q: torch.Tensor,
                      k: torch.Tensor,
                      q_start_loc: torch.Tensor,
                      q_seqlens: torch.Tensor,
                      candidate: torch.Tensor,
                      scale: float,
                      *,
                      max_q_len: int | None = None) -> torch.Tensor:
    """float32 [N]: attention mass each candidate receives from its sequence's candidates (spec §3.2).

    Per sequence and head ``h`` (KV head ``h // (H / Hkv)``), among candidate rows only: logits
    ``q_i . k_j * scale`` in fp32, a width-3 max-pool over the key axis in candidate order (the
    neighbours are the previous / next *candidate*, missing ones ignored), softmax over the
    candidate keys, then the probabilities summed over heads and candidate queries. Non-candidate
    and padding rows get 0. A sequence's importances sum to ``H * n``.

    It is a plain sum over the heads passed: under tensor parallelism each rank passes its local
    heads and an all-reduce (sum) of the result gives the full-model importance.
    Everything stays fp32 (the reference fork rounded to bf16, spec §10).
    """
    num_rows, num_heads, _ = q.shape
    group = num_heads // k.size(1)
    out = torch.zeros(num_rows, dtype=torch.float32, device=q.device)
    if num_rows == 0:
        return out
    cand = _candidate_rows(candidate, q_start_loc, q_seqlens, max_q_len)
    qc = q[cand.rows].float()  # [B, L, H, d]
    kc = k[cand.rows].float().repeat_interleave(group, dim=2)  # [B, L, H, d]
    logits = torch.einsum('bihd,bjhd->bhij', qc, kc) * scale
    key_ok = cand.valid[:, None, None, :]
    logits = logits.masked_fill(~key_ok, float('-inf'))
    # Candidates are compacted, so the pool's neighbours are the adjacent slots.
    edge = torch.full_like(logits[..., :1], float('-inf'))
    left = torch.cat([edge, logits[..., :-1]], dim=-1)
    right = torch.cat([logits[..., 1:], edge], dim=-1)
    pooled = torch.maximum(logits, torch.maximum(left, right)).masked_fill(~key_ok, float('-inf'))
    probs = torch.softmax(pooled, dim=-1)
    query_ok = cand.valid[:, None, :, None]
    probs = torch.where(query_ok, probs, torch.zeros_like(probs))  # rows of no candidate are NaN: dropped
    received = probs.sum(dim=(1, 2))  # [B, L]: over heads and queries
    return _scatter_rows(received, cand, out)


def select_kept(delta: torch.Tensor,
                candidate: torch.Tensor,
                block_pos: torch.Tensor,
                q_start_loc: torch.Tensor,
                q_seqlens: torch.Tensor,
                targets: torch.Tensor,
                progress: torch.Tensor,
                policy: str = 'importance',
                *,
                max_q_len: int | None = None) -> torch.Tensor:
    """bool [N]: the retain flag of every row (spec §3.5–3.6).

    Owned non-candidate rows: True. Padding rows: False. Candidates of sequence ``b`` with
    ``n`` candidates and target ``T``: all kept unless ``T > 0 and n > T``; otherwise

    * ``'importance'``: ``S_top`` = the ``T`` largest ``delta`` (ties to the leftmost);
      ``C = {delta >= mean + population std}``; keep ``C`` if ``|C| >= T`` else ``S_top``;
    * ``'leftmost'``: keep the first ``T`` candidates (``delta`` unused);

    then, in order: (1) left neighbour: keep a candidate whose next candidate is kept and sits at
    block position +1 (decided from the selection, not cascading); (2) if nothing is kept, keep
    all; (3) gap-fill: keep every candidate with ``progress < pos < r``, ``r`` the rightmost kept.

    The μ+σ test is evaluated as ``D >= 0 and n * D**2 >= sum(D**2)`` with ``D = n * delta - sum(delta)``
    in fp64 (the same inequality without division or square root): exact, hence independent of
    the summation order, whenever the sums are exact (e.g. deltas on a coarse grid), so the
    kernel reproduces it bit for bit.
    """
    if policy not in POLICIES:
        raise ValueError(f'unknown FOCUS selection policy {policy!r}; expected one of {POLICIES}')
    num_rows = delta.size(0)
    keep = torch.zeros(num_rows, dtype=torch.bool, device=delta.device)
    if num_rows == 0:
        return keep
    cand = _candidate_rows(candidate, q_start_loc, q_seqlens, max_q_len)
    valid = cand.valid
    n = valid.sum(1, keepdim=True)
    target = targets.long()[:, None]
    pos = block_pos.long()[cand.rows]
    slot = torch.arange(valid.size(1), device=valid.device)

    if policy == 'leftmost':
        chosen = valid & (slot[None, :] < target)
    else:
        d = delta[cand.rows].double()
        # rank of j: candidates k with a larger delta, or an equal one further left
        earlier = slot[None, :] < slot[:, None]  # [j, k]: k < j
        beats = valid[:, None, :] & ((d[:, None, :] > d[:, :, None]) | ((d[:, None, :] == d[:, :, None]) & earlier))
        top = valid & (beats.sum(-1) < target)
        nf = n.double()
        dev = nf * d - torch.where(valid, d, 0.0).sum(1, keepdim=True)
        spread = torch.where(valid, dev * dev, 0.0).sum(1, keepdim=True)
        above = valid & (dev >= 0) & (nf * dev * dev >= spread)
        chosen = torch.where(above.sum(1, keepdim=True) >= target, above, top)
    evict = (target > 0) & (n > target)
    chosen = torch.where(evict, chosen, valid)

    # (1) left neighbour: the next candidate is the next slot (compacted).
    next_chosen = torch.cat([chosen[:, 1:], torch.zeros_like(chosen[:, :1])], dim=1)
    next_pos = torch.cat([pos[:, 1:], torch.full_like(pos[:, :1], -2)], dim=1)
    chosen = chosen | (valid & next_chosen & (next_pos == pos + 1))
    # (2) never empty
    chosen = torch.where(chosen.any(1, keepdim=True), chosen, valid)
    # (3) gap-fill between the block progress and the rightmost kept candidate
    rightmost = torch.where(chosen, pos, -1).amax(1, keepdim=True)
    chosen = chosen | (valid & (pos > progress.long()[:, None]) & (pos < rightmost))

    owned = _sequence_rows(q_start_loc, q_seqlens, max_q_len)
    keep = _scatter_rows(torch.ones_like(owned.valid), owned, keep)
    return _scatter_rows(chosen, cand, keep)


def kept_layout(keep: torch.Tensor,
                q_start_loc: torch.Tensor,
                q_seqlens: torch.Tensor,
                block_pos: torch.Tensor,
                history: torch.Tensor,
                progress: torch.Tensor,
                *,
                max_q_len: int | None = None) -> KeptLayout:
    """Where the kept rows go, and the per-sequence view of the step after eviction (spec §3.7).

    New rows ``0 .. total-1`` are the kept rows (``keep`` and owned), in sequence order and row
    order within a sequence; rows ``total .. N-1`` are every other old row (evicted and padding)
    in row order, so ``src_row`` is a permutation and gathers / scatters through it stay in
    bounds and one-to-one (a ``ProcessingSet.flat_index`` composed with it stays a permutation).

    ``kv_seqlens = history + max(progress, rightmost) + 1``: keys up to the block progress after this step
    (subtract ignored history yourself). Every block position up to it has deep-layer K/V written in this
    block (a masked one was kept at some step: gap-fill keeps every candidate between the progress and the
    rightmost kept one; a decoded one was kept when it got its logits), except a masked position left of a
    token the prefill's unmasker decoded: it keeps the K/V the prefill wrote for its mask token until a step
    keeps it. The positions past it have none (masked, never kept). The reference fork's
    ``history + rightmost + 1`` (spec §3.7) hid the decoded tokens between the rightmost kept position and the
    progress, a defect its §10 lists.
    """
    num_rows = keep.size(0)
    seq = _sequence_rows(q_start_loc, q_seqlens, max_q_len)
    device = seq.rows.device
    kept = seq.valid & _take(keep, seq.rows)
    counts = kept.sum(1)
    start = counts.cumsum(0) - counts
    total = counts.sum()
    pos = _take(block_pos.long(), seq.rows)
    rightmost = torch.where(kept, pos, -1).amax(1)
    progress = progress.long()
    new_progress = torch.maximum(progress, rightmost)
    kv_seqlens = history.long() + new_progress + 1

    kept_dense = _SequenceRows(seq.rows, kept)
    is_kept = _scatter_rows(torch.ones_like(kept), kept_dense, torch.zeros(num_rows, dtype=torch.bool, device=device))
    others_before = (~is_kept).long().cumsum(0) - (~is_kept).long()
    dest = total + others_before
    dest = _scatter_rows(start[:, None] + kept.long().cumsum(1) - 1, kept_dense, dest)
    src_row = torch.empty_like(dest).scatter_(0, dest, torch.arange(num_rows, device=device))
    return KeptLayout(src_row=src_row,
                      q_seqlens=counts,
                      q_start_loc=start,
                      total=total,
                      kv_seqlens=kv_seqlens,
                      rightmost=rightmost,
                      progress=new_progress)
