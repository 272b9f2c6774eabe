"""Per-sequence delayed-cache state of the current block, kept on the device (spec §2.1).

LMDeploy 0.18 keeps decode state on the device between steps and the host only sends batch deltas,
so this state is a pair of batched tensors updated by vectorised torch ops: no loop over the batch,
no host sync, shapes depend on ``(B, L)`` only. Every function returns new tensors (no in-place
update) so a caller can keep the previous state, e.g. across CUDA-graph replays.

Lifecycle, as the DLLM step-inputs subclass (``strategies/dllm/delayed_cache_step_inputs.py``) drives it:

* a sequence joins after prefill → :meth:`DelayedCacheState.fresh` rows (:func:`append_fresh`);
* the batch shrinks or reorders (``ModelInputsDelta.indices``) → :func:`select`;
* each decode step: the step's front builds the processing set from the state (``sparse_step.processing_set``)
  and the next step's uncached positions (``sparse_step.uncached_after``: readiness on the step's *input*
  mask), which :func:`after_step` takes over; then :func:`reset_rows` for sequences whose block the unmasker
  committed (:func:`starts_new_block` of the step's output mask).

:func:`advance` / :func:`advance_after_step` (with ``processing_set.processing_positions``) are the same step in
its plain form, one function per rule of spec §2.1: the reference decode loop (``dev/``) and the state tests run
them, and the runtime's front is tested against them.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmdeploy.pytorch import consts

DLLM_MASKED = consts.DLLM_MASKED
DLLM_CACHED = consts.DLLM_CACHED


@dataclass
class DelayedCacheState:
    """``uncached[b, p]``: block position ``p`` of sequence ``b`` still has to be recomputed.

    ``needs_warmup[b]``: the next step of ``b`` processes the whole block (first step of a block).
    """
    uncached: torch.Tensor  # bool [B, L]
    needs_warmup: torch.Tensor  # bool [B]

    @classmethod
    def fresh(cls, batch_size: int, block_length: int, device=None) -> 'DelayedCacheState':
        """Sequences at the start of a block: everything uncached, warm-up pending."""
        return cls(uncached=torch.ones(batch_size, block_length, dtype=torch.bool, device=device),
                   needs_warmup=torch.ones(batch_size, dtype=torch.bool, device=device))

    @property
    def batch_size(self) -> int:
        return self.uncached.size(0)

    @property
    def block_length(self) -> int:
        return self.uncached.size(1)

    @property
    def device(self) -> torch.device:
        return self.uncached.device


def readiness_update(uncached: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
    """Drop the positions that became stable in a step whose input mask was ``input_mask``.

    ``p`` is ready iff ``p`` and its right neighbour were not MASKED in the step's *input* (the
    last position's missing neighbour counts as not masked). Using the input mask, not the
    unmasker's output, is what keeps a token decoded in step t uncached for step t+1, so its KV
    is recomputed once with the real token id.
    """
    return still_uncached(uncached, input_mask.view(uncached.shape) == DLLM_MASKED)


def still_uncached(uncached: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """:func:`readiness_update` on ``masked`` (bool [B, L]: MASKED in the step's input)."""
    return uncached & ~stable_positions(masked)


def stable_positions(masked: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: ``p`` and its right neighbour are not masked (``masked``: bool [B, L]); the last
    position's missing neighbour counts as not masked."""
    not_masked = ~masked
    right_not_masked = torch.cat([not_masked[:, 1:], not_masked.new_ones(not_masked.size(0), 1)], dim=1)
    return not_masked & right_not_masked


def advance(state: DelayedCacheState, input_mask: torch.Tensor) -> DelayedCacheState:
    """State for the next step of the same block: readiness applied, warm-up consumed.

    Depends only on the step's input, so it can run as soon as the step's processing set is
    built (no need to keep the input mask around until after unmasking).
    """
    return DelayedCacheState(uncached=readiness_update(state.uncached, input_mask),
                             needs_warmup=torch.zeros_like(state.needs_warmup))


def after_step(state: DelayedCacheState, uncached_next: torch.Tensor) -> DelayedCacheState:
    """:func:`advance` from the step's front, which already applied readiness (``uncached_next``, bool [B, L]:
    ``sparse_step.uncached_after``): copied, since under CUDA graphs it is a static buffer the next replay
    overwrites; warm-up consumed."""
    return DelayedCacheState(uncached=uncached_next.clone(), needs_warmup=torch.zeros_like(state.needs_warmup))


def starts_new_block(next_mask: torch.Tensor, block_length: int) -> torch.Tensor:
    """bool [B]: the unmasker committed the block (all CACHED), so the next step is a fresh block.

    Same test as upstream's ``_update_dllm``, which then appends an all-MASKED block.
    """
    return (next_mask.view(-1, block_length) == DLLM_CACHED).all(dim=1)


def reset_rows(state: DelayedCacheState, rows: torch.Tensor) -> DelayedCacheState:
    """Rows flagged in ``rows`` (bool [B]) start a new block: all uncached, warm-up pending."""
    return DelayedCacheState(uncached=state.uncached | rows[:, None], needs_warmup=state.needs_warmup | rows)


def advance_after_step(state: DelayedCacheState, input_mask: torch.Tensor,
                       next_mask: torch.Tensor) -> DelayedCacheState:
    """One whole decode step: :func:`advance`, then reset the rows whose block got committed."""
    advanced = advance(state, input_mask)
    return reset_rows(advanced, starts_new_block(next_mask, state.block_length))


def select(state: DelayedCacheState, batch_indices: torch.Tensor) -> DelayedCacheState:
    """Keep / reorder sequences like upstream's ``reindex`` (``batch_indices`` = ``delta.indices``)."""
    return DelayedCacheState(uncached=state.uncached.index_select(0, batch_indices),
                             needs_warmup=state.needs_warmup.index_select(0, batch_indices))


def append_fresh(state: DelayedCacheState, num_new: int) -> DelayedCacheState:
    """``state`` followed by ``num_new`` :meth:`~DelayedCacheState.fresh` sequences (new prefilled sequences
    joining): one torch call per tensor, where building the fresh rows and concatenating took two (the
    kernels stay: a pad fills and copies)."""
    return DelayedCacheState(uncached=F.pad(state.uncached, (0, 0, 0, num_new), value=True),
                             needs_warmup=F.pad(state.needs_warmup, (0, num_new), value=True))
