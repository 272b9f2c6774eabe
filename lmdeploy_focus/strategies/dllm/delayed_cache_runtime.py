"""What the model, the agent strategy and the step inputs share during a delayed-cache decode step.

The device-side state lives in :class:`DelayedCacheStepInputs` (it is reindexed and merged with
the batch, like upstream's decode state). The model builds the step's processing set from it just
before the forward (:meth:`begin_step`); the agent strategy scatters the ragged outputs back to the
dense ``B*L`` layout and unmasks only processed slots, then ends the step.
"""
import os
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function

from lmdeploy.pytorch import consts

from ...log import logger

from . import focus_state
from .delayed_cache_state import advance
from .focus_step import FocusConfig, FocusStep
from .processing_set import (ProcessingSet, RaggedStepMetadata, gather_processed, processing_mask,
                             ragged_step_metadata, scatter_processed)
from .run_stats import RunStats, per_sequence_counts


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
    exact_rows: bool = True  # the rows are exactly the valid ones (no padding rows: count synced)
    logits_scattered: bool = False
    focus: FocusStep | None = None
    processed_per_seq: torch.Tensor | None = None  # int64 [B]: rows into layer 0 per sequence
    mark_phase: object = None  # the runtime's phase marker while profiling, else None


@dataclass
class DelayedCacheRuntime:
    block_length: int
    commit_mode: str = 'exact'
    step_inputs: object = field(default=None, repr=False)  # the agent's DelayedCacheStepInputs
    step: DelayedCacheStep | None = None
    focus: FocusConfig | None = None  # FOCUS eviction on top of delayed cache
    stats: RunStats | None = None  # dllm_track
    timer: object = None  # PhaseTimer when LMDEPLOY_FOCUS_PHASE_TIMING=1 (profiling only)
    _logits_buffer: torch.Tensor | None = field(default=None, repr=False)
    # LM-head rows per chunk: 1024 rows of a 150k vocab in bf16 is ~300 MiB, enough rows to keep
    # the GEMM efficient.
    logits_chunk_rows: int = 1024
    process_all: bool = field(default_factory=lambda: os.environ.get(PROCESS_ALL_ENV, '') == '1')
    static_rows: bool = field(default_factory=lambda: os.environ.get(STATIC_ROWS_ENV, '') == '1')
    # Work counters (host ints, free: the row count is read on the host anyway).
    steps: int = 0
    processed_rows: int = 0
    kept_rows: int = 0
    dense_rows: int = 0
    log_every: int = 500

    def decode_batch_matches(self, num_tokens: int) -> bool:
        """A real decode step of the tracked batch (not a warm-up / graph-capture dummy)."""
        state = getattr(self.step_inputs, 'delayed_state', None)
        return state is not None and state.batch_size * self.block_length == num_tokens

    @record_function('delayed.begin_step')
    def begin_step(self, dense_input_ids: torch.Tensor) -> DelayedCacheStep:
        """Processing set of this step from the device state; advances the state for the next step."""
        self.mark_phase(None)
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
        focus = None
        if self.focus is not None:
            focus = self._focus_step(proc, input_mask, num_rows, step_inputs)
        self.step = DelayedCacheStep(proc=proc, meta=meta, num_rows=num_rows, exact_rows=not self.static_rows,
                                     focus=focus,
                                     processed_per_seq=proc.q_seqlens,
                                     mark_phase=self.mark_phase if self.timer is not None else None)
        self.mark_phase('processing_set')
        return self.step

    def _focus_step(self, proc: ProcessingSet, input_mask: torch.Tensor, num_rows: int, step_inputs) -> FocusStep:
        """FOCUS inputs of the step: masked processed rows are the eviction candidates (spec §3.1)."""
        candidate_dense = proc.processed & (input_mask == consts.DLLM_MASKED)
        state = step_inputs.focus_state
        return FocusStep(config=self.focus,
                         candidate=gather_processed(candidate_dense, proc, num_rows),
                         candidate_dense=candidate_dense,
                         num_candidates=candidate_dense.sum(dim=1),
                         avg_decoded=state.avg_decoded(),
                         progress=state.progress,
                         block_pos=proc.block_pos[:num_rows],
                         history=step_inputs.model_inputs.history_lengths.long())

    def after_unmasking(self, input_mask: torch.Tensor, next_mask: torch.Tensor) -> torch.Tensor | None:
        """Device-side bookkeeping once the step's tokens are unmasked (before the block may commit).

        With ``dllm_track``, returns the step's per-sequence counts (:func:`per_sequence_counts`).
        """
        step, L = self.step, self.block_length
        decoded = focus_state.newly_decoded(input_mask, next_mask, L)
        num_decoded = decoded.sum(dim=1)
        focus = step.focus
        if focus is not None:
            progress = focus.progress_out if focus.progress_out is not None else focus.progress
            inputs = self.step_inputs
            inputs.focus_state = focus_state.record_step(inputs.focus_state, progress, num_decoded)
        if self.stats is None:
            return None
        columns = dict(decode_steps=1,
                       generated_tokens=num_decoded,
                       processed_tokens=step.processed_per_seq,
                       deep_tokens=step.proc.q_seqlens)
        if focus is not None and focus.selected_dense is not None:
            candidates = focus.candidate_dense
            columns.update(candidates=focus.num_candidates,
                           kept_candidates=(step.proc.processed & candidates).sum(dim=1))
            if focus.config.shadow:
                # Shadow recall: with eviction on it would be 1 by construction (an evicted token cannot be
                # decoded), so it is measured in shadow mode only, over sequences that had more
                # candidates than their target (the only ones where the selection matters).
                selected = focus.selected_dense & candidates
                scored = decoded & focus.evicting[:, None]
                num_scored = scored.sum(dim=1)
                n_sel = selected.sum(dim=1).to(torch.float32)
                n_cand = focus.num_candidates.clamp(min=1).to(torch.float32)
                columns.update(shadow_decoded=num_scored,
                               shadow_selected_decoded=(scored & selected).sum(dim=1),
                               shadow_random_expected=num_scored * n_sel / n_cand)
        rows = per_sequence_counts(decoded.size(0), device=decoded.device, **columns)
        self.stats.add_rows(rows)
        return rows

    def _count(self, step: DelayedCacheStep) -> None:
        """Host-side row counters (free: both counts are host ints already), logged now and then."""
        focus = step.focus
        rows = focus.processed_rows if focus is not None and focus.processed_rows else step.num_rows
        self.steps += 1
        self.processed_rows += rows
        self.kept_rows += step.num_rows
        self.dense_rows += step.proc.num_rows
        if self.steps % self.log_every == 0:
            kept = f', {self.kept_rows / self.steps:.1f} past FOCUS eviction' if self.focus is not None else ''
            logger.info(f'delayed cache: {self.steps} decode steps, {self.processed_rows / self.steps:.1f} rows per step '
                        f'processed of {self.dense_rows / self.steps:.1f} in the blocks '
                        f'({self.processed_rows / max(self.dense_rows, 1):.1%}){kept}.')

    def dense_logits(self, hidden_rows: torch.Tensor, lm_head) -> torch.Tensor:
        """``[B*L, V]`` logits for the sampler: ``lm_head`` on the step's ``[num_rows, H]`` rows.

        The LM head runs on the processed (kept) rows only, ``logits_chunk_rows`` rows at a time,
        written straight into a persistent buffer: the step's vocab-wide memory stays one
        ``B*L x V`` tensor plus a chunk, as in stock decoding, instead of that plus a ragged copy
        plus the scatter's temporaries (which ran a 16B-MoE at bs 256 out of memory).
        Unprocessed slots keep stale but finite values the unmasker never reads (guarded), so the
        buffer is never cleared; after the batch shrinks they may hold another sequence's old rows
        (the sampler still edits them in place, harmlessly), until the slot is processed.
        """
        step = self.step
        proc = step.proc
        num_rows = hidden_rows.size(0)
        chunk = None
        for start in range(0, num_rows, self.logits_chunk_rows):
            chunk = lm_head(hidden_rows[start:start + self.logits_chunk_rows])
            if start == 0:
                buffer = self._dense_buffer(proc.num_rows, chunk)
            if num_rows == step.num_rows and step.exact_rows:
                # every row is a processed slot
                buffer.index_copy_(0, proc.flat_index[start:start + chunk.size(0)], chunk)
            else:
                scatter_processed(chunk, proc, out=buffer.view(proc.batch_size, proc.block_length, -1),
                                  row_offset=start)
        if chunk is None:
            raise RuntimeError('delayed-cache decode step with no processed rows')
        step.logits_scattered = True
        return buffer

    def _dense_buffer(self, num_rows: int, like: torch.Tensor) -> torch.Tensor:
        """The first ``num_rows`` rows of the persistent logits buffer; it only grows, and the old
        one is dropped before a bigger one is made so that the two never coexist."""
        buffer = self._logits_buffer
        vocab = like.size(-1)
        if buffer is None or buffer.size(0) < num_rows or buffer.size(1) != vocab or \
                buffer.dtype != like.dtype or buffer.device != like.device:
            self._logits_buffer = buffer = None
            buffer = self._logits_buffer = like.new_zeros(num_rows, vocab)
        return buffer[:num_rows]

    def release_logits_buffer(self) -> None:
        """Hand the logits buffer back to the allocator (a prefill step needs the room: upstream's
        runtime reserve counts one set of logits, not ours kept alive next to prefill's)."""
        self._logits_buffer = None

    def mark_phase(self, boundary: str | None) -> None:
        """Phase boundary for the profiling timer (no-op unless timing is on); None starts a step."""
        if self.timer is not None:
            self.timer.start() if boundary is None else self.timer.mark(boundary)

    def end_step(self) -> None:
        if self.step is not None:
            self._count(self.step)
            if self.timer is not None:
                self.timer.finish()
        self.step = None
