"""Debug check: every attention TP rank keeps the same FOCUS rows (``LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1``).

Under tensor parallelism each rank selects from the all-reduced importance delta
(:mod:`.importance_reduce`), so every rank should compute the same kept rows. If one did not
(a missed or misrouted reduction, non-deterministic kernels), the ranks would run their
row-parallel all-reduces over different row counts and layouts: wrong outputs or a hang, far from
the cause. With the variable set:

* ``front`` (FOCUS path) adds a checksum of the step's kept layout, all-reduced with MAX over the
  attention TP group as ``[max, -min]`` (one extra collective per step, debug only), to its outputs
  (:func:`all_ranks_checksums`; device-side, so it can sit inside the captured front graph);
* :class:`~.step_graphs.StepGraphs` compares them where it reads the step's row counts anyway
  (:func:`verify`: one more small device-to-host copy, no extra wait) and raises a RuntimeError
  naming the decode step when the ranks disagree.

Without the variable nothing here runs (no collective, no copy). At TP 1 the check is skipped.
Verified on CPU (gloo, eager); with CUDA graphs the MAX all-reduce is captured in the front graph
like the importance all-reduce, which has not been run on GPUs yet.
"""
import functools

import torch
import torch.distributed as dist

from ..config.env_switch import env_switch

from . import importance_reduce

ENV = 'LMDEPLOY_FOCUS_CHECK_TP_LAYOUT'

_MASK = (1 << 62) - 1  # keep checksums non-negative and negatable in int64
_PRIME = 1_000_003

_checked_steps = 0  # decode steps verified in this process (names the step in the error)


@functools.cache
def requested() -> bool:
    """``LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1`` (read once per process)."""
    return env_switch(ENV)


def layout_checksum(layout) -> torch.Tensor:
    """int64 0-d: a position-weighted checksum of a :class:`~..reference.focus.KeptLayout`.

    Covers the row permutation (so the kept set and its order), the per-sequence counts, starts,
    KV lengths and progress, and the total. Integer arithmetic (int64, wrapping): bit-identical on
    every rank for identical layouts; a different value of any one entry always changes it (a swap
    of two ``src_row`` entries too, as the weights differ).
    """
    src = layout.src_row
    parts = [src, layout.q_seqlens, layout.q_start_loc, layout.kv_seqlens, layout.progress, layout.total.reshape(1)]
    flat = torch.cat([p.long().reshape(-1) for p in parts])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.long, device=flat.device) * _PRIME + 1
    return ((flat + 1) * weights).sum() & _MASK


def all_ranks_checksums(layout, tp_size: int | None = None, group=None) -> torch.Tensor | None:
    """int64 [3] ``[min over ranks, max over ranks, this rank's]`` of :func:`layout_checksum` (one MAX
    all-reduce over ``group``, default lmdeploy's attention TP group); None at TP 1 (nothing to compare)."""
    if importance_reduce.tp_size_of(tp_size, group) <= 1:
        return None
    own = layout_checksum(layout)
    extremes = torch.stack([own, -own])
    importance_reduce._all_reduce(extremes, op=dist.ReduceOp.MAX, group=group)
    return torch.stack([-extremes[1], extremes[0], own])


def verify(checksums: torch.Tensor, step: int | None = None) -> None:
    """Host side: raise if the ranks' kept layouts differed. ``step`` names the decode step (default:
    count the calls in this process, from 1)."""
    global _checked_steps
    _checked_steps += 1
    step = _checked_steps if step is None else step
    low, high, own = checksums.tolist()
    if low != high:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        raise RuntimeError(
            f'FOCUS tensor parallelism: the kept-row layout differs across attention TP ranks at decode step '
            f'{step} (checksums from {low} to {high}; global rank {rank} has {own}). Every rank must select '
            f'from the same all-reduced importance delta (models/importance_reduce.py); outputs of this step '
            f'would be wrong. Raised because {ENV}=1.')
