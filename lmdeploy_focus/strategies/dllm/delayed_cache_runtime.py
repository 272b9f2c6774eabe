"""What the model, the agent strategy and the step inputs share during a delayed-cache decode step.

The device-side state lives in :class:`DelayedCacheStepInputs` (it is reindexed and merged with
the batch, like upstream's decode state). The model builds the step's processing set from it just
before the forward (:meth:`begin_step`); the agent strategy scatters the ragged outputs back to the
dense ``B*L`` layout and unmasks only processed slots, then ends the step.
"""
import os
from dataclasses import dataclass, field

import torch

from lmdeploy.pytorch import consts

from ...log import logger

from .delayed_cache_state import advance
from .processing_set import ProcessingSet, RaggedStepMetadata, processing_mask, ragged_step_metadata


# Debug mode: keep the delayed-cache machinery (ragged rows, sparse fill, ragged attention, scatter,
# guarded unmasking) but process every position, which must reproduce stock decoding.
PROCESS_ALL_ENV = 'LMDEPLOY_FOCUS_DELAYED_CACHE_PROCESS_ALL'
# Experiment: run the static B*L row layout (padding rows computed and dropped) instead of syncing
# on the processed-row count; trades the per-step host sync for compute on padding rows.
STATIC_ROWS_ENV = 'LMDEPLOY_FOCUS_DELAYED_CACHE_STATIC_ROWS'


@dataclass
class DelayedCacheStep:
    proc: ProcessingSet
    meta: RaggedStepMetadata  # sliced to the ``num_rows`` valid rows
    num_rows: int
    hidden_scattered: bool = False


@dataclass
class DelayedCacheRuntime:
    block_length: int
    commit_mode: str = 'exact'
    step_inputs: object = field(default=None, repr=False)  # the agent's DelayedCacheStepInputs
    step: DelayedCacheStep | None = None
    process_all: bool = field(default_factory=lambda: os.environ.get(PROCESS_ALL_ENV, '') == '1')
    static_rows: bool = field(default_factory=lambda: os.environ.get(STATIC_ROWS_ENV, '') == '1')
    # Work counters (host ints, free: the row count is read on the host anyway).
    steps: int = 0
    processed_rows: int = 0
    dense_rows: int = 0
    log_every: int = 500

    def decode_batch_matches(self, num_tokens: int) -> bool:
        """A real decode step of the tracked batch (not a warm-up / graph-capture dummy)."""
        state = getattr(self.step_inputs, 'delayed_state', None)
        return state is not None and state.batch_size * self.block_length == num_tokens

    def begin_step(self, dense_input_ids: torch.Tensor) -> DelayedCacheStep:
        """Processing set of this step from the device state; advances the state for the next step."""
        step_inputs = self.step_inputs
        state = step_inputs.delayed_state
        input_mask = step_inputs.extra_inputs.dllm_mask.view(state.batch_size, self.block_length)
        processed = processing_mask(state)
        if self.commit_mode == 'exact':
            # A fully decoded block is recomputed whole before it becomes history, so later blocks
            # never attend to KV computed while its right neighbours were still masks.
            commit_rows = (input_mask != consts.DLLM_MASKED).all(dim=1)
            processed = processed | commit_rows[:, None]
        if self.process_all:
            processed = torch.ones_like(processed)
        proc = ProcessingSet.from_mask(processed)
        # The one host sync of the step: the forward runs on exactly the processed rows. It waits
        # for the previous step's unmasking, which the next forward depends on anyway.
        num_rows = proc.num_rows if self.static_rows else int(proc.total)
        meta = ragged_step_metadata(proc,
                                    step_inputs.model_inputs.history_lengths,
                                    dense_input_ids=dense_input_ids,
                                    num_rows=num_rows)
        step_inputs.delayed_state = advance(state, input_mask)
        self.step = DelayedCacheStep(proc=proc, meta=meta, num_rows=num_rows)
        self._count(num_rows, proc.num_rows)
        return self.step

    def _count(self, rows: int, dense_rows: int) -> None:
        self.steps += 1
        self.processed_rows += rows
        self.dense_rows += dense_rows
        if self.steps % self.log_every == 0:
            logger.info(f'delayed cache: {self.steps} decode steps, {self.processed_rows / self.steps:.1f} rows per step '
                        f'processed of {self.dense_rows / self.steps:.1f} in the blocks '
                        f'({self.processed_rows / max(self.dense_rows, 1):.1%}).')

    def end_step(self) -> None:
        self.step = None
