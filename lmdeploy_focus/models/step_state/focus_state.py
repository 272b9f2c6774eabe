"""Per-sequence FOCUS state of the current block, on the device (spec §3.4, §3.6, §3.8).

* ``progress[b]``: largest block position processed through *all* layers in an earlier step of
  this block (-1 at block start). Gap-fill keeps every masked token between it and the rightmost
  kept one, so positions ``0 .. progress`` always have KV in every layer.
* ``decoded_sum[b]`` / ``decoded_steps[b]``: tokens unmasked so far in this block's decode steps
  and the number of those steps that unmasked at least one; their ratio is the running average
  that sets how many masked tokens a step keeps (:func:`first_step_average` before the first such step).

Lifecycle follows :class:`~.delayed_cache_state.DelayedCacheState` (fresh on join, select on
reindex, reset when a block is committed); every function returns new tensors, no host sync.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import UnmaskingStrategy

DLLM_MASKED = consts.DLLM_MASKED
DLLM_UNMASKED = consts.DLLM_UNMASKED


@dataclass
class FocusState:
    progress: torch.Tensor  # int64 [B]
    decoded_sum: torch.Tensor  # float32 [B]
    decoded_steps: torch.Tensor  # float32 [B]

    @classmethod
    def fresh(cls, batch_size: int, device=None) -> 'FocusState':
        return cls(progress=torch.full((batch_size, ), -1, dtype=torch.long, device=device),
                   decoded_sum=torch.zeros(batch_size, dtype=torch.float32, device=device),
                   decoded_steps=torch.zeros(batch_size, dtype=torch.float32, device=device))

    @property
    def batch_size(self) -> int:
        return self.progress.numel()

    def avg_decoded(self, first_step: float = 1.0) -> torch.Tensor:
        """float32 [B]: mean tokens unmasked per step of this block (steps that unmasked any); ``first_step``
        (:func:`first_step_average`) if none."""
        # the quotient of a sequence without steps (0 / 0) is never selected
        return torch.where(self.decoded_steps > 0, self.decoded_sum / self.decoded_steps, first_step)


def first_step_average(per_step: int | None) -> float:
    """The running mean before a block's first decode step: the tokens the unmasker takes per step.

    Dynamic unmasking: 1, its forced top-1 (spec §3.4's reset). Static and sequential unmasking take
    upstream's denoise number ``L // denoising_steps`` every step; starting from 1 would keep fewer masked
    tokens than that at a block's first steps (α 1.5: 2, then 3), the unmasker could only decode those,
    and every block would take extra steps (measured: leftmost at 4 tokens/step took 10 steps a block
    instead of stock's 9, commit included).
    """
    return 1.0 if per_step is None else float(per_step)


def decode_per_step(dllm_config) -> int | None:
    """The most tokens a step of one block decodes: upstream's denoise number ``max(1, L // denoising_steps)``
    under static unmasking (it takes that many, or every masked slot if fewer) and sequential unmasking (at
    most that many: its window may wrap onto decoded slots); None under dynamic unmasking (every token above
    the threshold)."""
    if dllm_config.unmasking_strategy not in (UnmaskingStrategy.LOW_CONFIDENCE_STATIC, UnmaskingStrategy.SEQUENTIAL):
        return None
    # imported here: lmdeploy.pytorch.strategies.dllm's import applies the strategy-factory patch, whose factory
    # imports this module (a module-level import made that patch fail when this module was imported first)
    from lmdeploy.pytorch.strategies.dllm.unmasking import UnmaskingProcessor

    # the unmasker's own count (it reads denoising_steps unguarded: None is the block length, as the factory sets)
    config = replace(dllm_config, denoising_steps=dllm_config.denoising_steps or dllm_config.block_length)
    return int(UnmaskingProcessor(config)._get_denoise_num())


def newly_decoded(masked: torch.Tensor, next_mask: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: MASKED → UNMASKED in this step (the tokens the step decoded); ``masked``: bool [B, L], the
    slots MASKED in the step's input, ``next_mask`` the unmasker's output (any shape of B·L)."""
    return masked & (next_mask.view_as(masked) == DLLM_UNMASKED)


def record_step(state: FocusState, progress: torch.Tensor, num_decoded: torch.Tensor) -> FocusState:
    """After a decode step: the forward's new progress, and this step's decoded count (int [B]).

    ``progress`` is copied: under CUDA graphs it is a view of the front graph's static output, which the
    next replay overwrites (a [B] copy; the state must not depend on when it is read).
    """
    # float32 + an integer or bool tensor is float32 (type promotion): no separate casts
    return FocusState(progress=progress.clone(),
                      decoded_sum=state.decoded_sum + num_decoded,
                      decoded_steps=state.decoded_steps + (num_decoded > 0))


def reset_rows(state: FocusState, rows: torch.Tensor) -> FocusState:
    """Rows flagged in ``rows`` (bool [B]) start a new block."""
    return FocusState(progress=state.progress.masked_fill(rows, -1),
                      decoded_sum=state.decoded_sum.masked_fill(rows, 0.0),
                      decoded_steps=state.decoded_steps.masked_fill(rows, 0.0))


def select(state: FocusState, batch_indices: torch.Tensor) -> FocusState:
    return FocusState(progress=state.progress.index_select(0, batch_indices),
                      decoded_sum=state.decoded_sum.index_select(0, batch_indices),
                      decoded_steps=state.decoded_steps.index_select(0, batch_indices))


def append_fresh(state: FocusState, num_new: int) -> FocusState:
    """``state`` followed by ``num_new`` :meth:`~FocusState.fresh` sequences: one pad per tensor."""
    return FocusState(progress=F.pad(state.progress, (0, num_new), value=-1),
                      decoded_sum=F.pad(state.decoded_sum, (0, num_new), value=0.0),
                      decoded_steps=F.pad(state.decoded_steps, (0, num_new), value=0.0))
