"""What the model, the agent strategy and the step inputs share during a delayed-cache decode step.

The device-side state lives in :class:`DelayedCacheStepInputs` (it is reindexed and merged with
the batch, like upstream's decode state). The model runs the step's forward
(:meth:`DelayedCacheRuntime.run_step`, the step itself is :mod:`lmdeploy_focus.models.sparse_step`);
the model's LM head runs on the rows that need logits (:meth:`DelayedCacheRuntime.row_logits`), the
agent strategy samples and unmasks those rows only, and ends the step. A sync-free small batch runs the
head on every ``B*L`` slot instead (``DecodeStep.sync_free``); a stock batch runs upstream's step and never
reaches :meth:`DelayedCacheRuntime.run_step`.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function

from lmdeploy.pytorch import consts

from ...config.env_switch import env_switch
from ...log import logger

from ...models.step_state import focus_state, shadow_schedule
from . import alpha_controller
from ...models.step_state.delayed_cache_state import after_step
from ...models.step_state.focus_step import FocusConfig
from .run_stats import RunStats, per_sequence_counts, whole_block_counts
from .stream_wait import await_stream_requested


# Debug mode: keep the delayed-cache machinery (ragged rows, sparse fill, ragged attention, scatter,
# guarded unmasking) but process every position, which must reproduce stock decoding.
PROCESS_ALL_ENV = 'LMDEPLOY_FOCUS_DELAYED_CACHE_PROCESS_ALL'


def cuda_event():
    """A reusable CUDA event, or None without CUDA (no work runs ahead of the host to wait for)."""
    return torch.cuda.Event() if torch.cuda.is_available() else None


def shadow_counts(decoded: torch.Tensor, focus, sequences: torch.Tensor | None = None) -> dict:
    """Per-sequence shadow-recall counts of a step whose selection evicted nothing (shadow mode, or
    auto α's shadow sequences ``sequences``): decoded tokens, those the selection had kept, and the
    number a random subset of the same size would have kept. Counted only where the candidates
    outnumbered the target (the only sequences where the selection matters); with eviction on, the
    recall would be 1 by construction (an evicted token cannot be decoded)."""
    selected = focus.selected_dense & focus.candidate_dense
    measured = focus.evicting if sequences is None else focus.evicting & sequences
    scored = decoded & measured[:, None]
    num_scored = scored.sum(dim=1)
    n_sel = selected.sum(dim=1).to(torch.float32)
    n_cand = focus.num_candidates.clamp(min=1).to(torch.float32)
    return dict(shadow_decoded=num_scored, shadow_selected_decoded=(scored & selected).sum(dim=1),
                shadow_random_expected=num_scored * n_sel / n_cand)


@dataclass(frozen=True)
class DecodeStep:
    """What the LM head, the unmasker and the bookkeeping read of one step's forward (``B`` sequences).

    Tensors are views of the step's outputs (the graph's static buffers under CUDA graphs), valid
    until the next decode step's forward; ``masked`` is the step's own (built from its input mask).
    """
    batch_size: int
    block_length: int
    num_rows: int  # K: rows out of the deep layers (host int, read once per step); sync-free: B*L slots
    num_logit_rows: int  # M: those whose slot is still MASKED: the only rows the unmasker reads; sync-free: B*L
    rows: object  # sparse_step.DeepRows ([B̂]-sized per-sequence fields; rows past K are padding)
    fresh: torch.Tensor  # bool [B, L]: slots computed through every layer this step
    masked: torch.Tensor  # bool [B, L]: slots MASKED in the step's input
    masked_unprocessed: torch.Tensor | None  # bool [B, L]: MASKED slots without fresh logits (None: none, no FOCUS)
    processed_per_seq: torch.Tensor  # int64 [B]: rows into layer 0
    kept_per_seq: torch.Tensor  # int64 [B]: rows through the deep layers
    focus: object = None  # sparse_step.FocusOutcome cut to B sequences, FOCUS only
    # a small batch's step that read no counts (step_graphs.SYNC_FREE_ROWS): the hidden states are by slot, the LM
    # head, sampler and unmasker run on every slot (zero rows where no logits are needed)
    sync_free: bool = False
    # rows the deep layers ran on, for the work counters (None: num_rows; sync-free: the padded bucket, K being unread)
    deep_rows: int | None = None


@dataclass
class DelayedCacheRuntime:
    block_length: int
    commit_mode: str = 'exact'
    step_inputs: object = field(default=None, repr=False)  # the agent's DelayedCacheStepInputs
    step: DecodeStep | None = None
    focus: FocusConfig | None = None  # FOCUS eviction on top of delayed cache
    decode_per_step: int | None = None  # static / sequential unmasking's tokens per step (focus_state.decode_per_step)
    stats: RunStats | None = None  # dllm_track
    timer: object = None  # PhaseTimer when LMDEPLOY_FOCUS_PHASE_TIMING=1 (profiling only)
    attention_rows: object = None  # sparse_step.AttentionRows while the deep layers are built/run
    logit_slots: torch.Tensor | None = field(default=None, repr=False)  # int64 [M]: slot of each logits row
    process_all: bool = field(default_factory=lambda: env_switch(PROCESS_ALL_ENV))
    # Work counters (host ints, free: the row counts are read on the host anyway).
    steps: int = 0
    deep_rows: int = 0
    logit_rows: int = 0
    dense_rows: int = 0
    stock_steps: int = 0  # decode steps run as upstream's stock step (--dllm-stock-step-rows)
    # --dllm-stock-step-rows (0: no stock steps), and the decode batch sizes upstream's graph runner warmed up (its
    # CUDA-graph capture sizes; empty without graphs): see stock_batch
    stock_step_rows: int = 0
    graph_batches: set = field(default_factory=set)
    log_every: int = 500
    # --dllm-focus-alpha auto: the controller's state (0-d device tensors), this step's shadow sequences
    alpha_state: object = field(default=None, repr=False)
    # auto with CUDA graphs: the controller's update as one replay (captured with the step graphs; None: eager updates)
    controller: object = field(default=None, repr=False)
    shadow_seq: torch.Tensor | None = field(default=None, repr=False)
    logged_fallbacks: int = -1  # auto: the fall-back count whose warning went out (0: probation's)
    # patch 18 (stream_wait; $LMDEPLOY_FOCUS_AWAIT_STREAM=0 turns it off): an event recorded once a step's deep graph is
    # launched, awaited by the agent before the next decode forward. A bad value fails at engine build.
    await_stream: bool = field(default_factory=await_stream_requested)
    _deep_event: object = field(default=None, repr=False)
    _deep_pending: bool = False

    def decode_batch_matches(self, num_tokens: int) -> bool:
        """A real decode step of the tracked batch (not a warm-up / graph-capture dummy)."""
        state = getattr(self.step_inputs, 'delayed_state', None)
        return state is not None and state.batch_size * self.block_length == num_tokens

    def stock_step(self, num_tokens: int) -> bool:
        """A decode forward of ``num_tokens`` block rows that runs as upstream's stock step."""
        return self.stock_batch(num_tokens // self.block_length)

    def stock_batch(self, batch_size: int) -> bool:
        """Whether a decode batch of ``batch_size`` sequences runs upstream's stock step (``--dllm-stock-step-rows``):
        the one rule of the model's forward and ``support_cuda_graph``, the agent strategy and ``step_decode``.

        Under CUDA graphs upstream pads a batch to its smallest capture size that holds it and replays that size's
        graph, so the rule is per capture size: at warm-up (no request yet) a size is stock iff its block rows fit,
        and upstream captures its own graph for it (the plugin captures the others); in serving a batch is stock iff
        it is at most the largest warmed size whose rows fit, so its padded size is one of those. Without graphs
        (none warmed) a batch is stock iff its own rows fit. Same on every TP rank: each warms the same sizes."""
        rows, length = self.stock_step_rows, self.block_length
        if rows < length:
            return False
        if self.serving_idle():
            return batch_size * length <= rows
        return batch_size <= self.stock_batch_limit()

    def stock_batch_limit(self) -> int:
        """The largest decode batch that runs stock steps in serving (0: none; see :meth:`stock_batch`)."""
        fit = self.stock_step_rows // self.block_length
        if not self.graph_batches:
            return fit
        return max((size for size in self.graph_batches if size <= fit), default=0)

    def note_graph_batch(self, batch_size: int) -> None:
        """Upstream's graph runner asked whether a decode batch of this size replays a graph: at warm-up that is one
        of its capture sizes (:meth:`stock_batch` follows them)."""
        if self.serving_idle():
            self.graph_batches.add(batch_size)

    def serving_idle(self) -> bool:
        """No request has reached the decode state since the step inputs were built (engine start, or
        a wake-up after sleep): a decode forward now is upstream's warm-up, never live traffic."""
        return getattr(self.step_inputs, 'delayed_state', None) is None

    @property
    def first_step_decoded(self) -> float:
        """FOCUS's running mean before a block's first step (focus_state.first_step_average)."""
        return focus_state.first_step_average(self.decode_per_step)

    def step_config(self):
        from ...models.sparse_step import StepConfig
        return StepConfig(block_length=self.block_length, commit_mode=self.commit_mode, process_all=self.process_all,
                          focus=self.focus, decode_per_step=self.decode_per_step)

    @contextmanager
    def attending(self, rows):
        """The model's delayed-cache attention layers attend over ``rows`` inside this block."""
        self.attention_rows = rows
        try:
            yield
        finally:
            self.attention_rows = None

    @record_function('delayed.run_step')
    def run_step(self, steps, dense_input_ids: torch.Tensor, kv_caches, block_offsets, attn_metadata) -> torch.Tensor:
        """The step's forward through ``steps`` (a ``StepGraphs``); hidden states ``[K, D]`` of its deep rows."""
        from ...models.sparse_step import StepInputs
        self.mark_phase(None)
        inputs = self.step_inputs
        inputs.fresh_state_if_stale()
        state, fstate = inputs.delayed_state, inputs.focus_state
        batch, length = state.batch_size, self.block_length
        input_mask = inputs.extra_inputs.dllm_mask
        batch_inputs = StepInputs(input_ids=dense_input_ids.view(batch, length),
                                  masked=input_mask.view(batch, length) == consts.DLLM_MASKED,
                                  history=inputs.model_inputs.history_lengths.long(),
                                  uncached=state.uncached,
                                  needs_warmup=state.needs_warmup,
                                  seq_valid=None,  # all valid (StepGraphs.run)
                                  # FOCUS's state: delayed cache alone reads neither
                                  progress=None if self.focus is None else fstate.progress,
                                  avg_decoded=None if self.focus is None else fstate.avg_decoded(self.first_step_decoded))
        self.shadow_seq = None
        if self.focus is not None and self.focus.auto is not None:
            self._auto_inputs(batch_inputs)
        run = steps.run(batch_inputs, kv_caches, block_offsets, attn_metadata, mark=self.mark_phase,
                        row_bound=inputs.next_rows_bound)
        outputs, hidden, num_rows, num_logit_rows = run.outputs, run.hidden, run.num_rows, run.num_logit_rows
        inputs.next_rows_bound = run.next_rows_bound
        if self.await_stream and not run.sync_free:  # a sync-free step has no read to keep off the loop
            self.deep_launched()
        inputs.delayed_state = after_step(state, outputs.uncached_next)
        self.step = DecodeStep(batch_size=batch, block_length=length, num_rows=num_rows, num_logit_rows=num_logit_rows,
                               rows=outputs.rows, fresh=outputs.fresh, masked=batch_inputs.masked,
                               masked_unprocessed=outputs.masked_unprocessed,
                               processed_per_seq=outputs.processed_per_seq,
                               kept_per_seq=outputs.rows.q_seqlens[:batch], focus=outputs.focus,
                               sync_free=run.sync_free, deep_rows=run.deep_rows)
        return hidden

    def deep_launched(self) -> None:
        """Record, on the forward's stream, that this step's deep layers are queued (stream_wait)."""
        if self._deep_event is None:
            self._deep_event = cuda_event()
            if self._deep_event is None:
                return
        self._deep_event.record()
        self._deep_pending = True

    def take_deep_launched(self):
        """The event of the last step's deep layers if not yet awaited (once), else None."""
        if not self._deep_pending:
            return None
        self._deep_pending = False
        return self._deep_event

    def _auto_inputs(self, batch_inputs) -> None:
        """--dllm-focus-alpha auto: this step's shadow sequences (the schedule ticks) and each one's α."""
        inputs, focus = self.step_inputs, self.focus
        device = batch_inputs.progress.device
        if self.alpha_state is None or self.alpha_state.alpha.device != device:
            self.alpha_state = alpha_controller.initial_state(focus.auto, device)
        shadow, inputs.shadow_countdown = shadow_schedule.tick(inputs.shadow_countdown, focus.shadow_every)
        self.shadow_seq = shadow
        batch_inputs.shadow_seq = shadow
        # fallen back: α = L keeps every candidate (spec §3.4: the target is then the candidate count)
        batch_inputs.alpha = alpha_controller.step_alpha(self.alpha_state, shadow, float(self.block_length))

    def capture_controller(self, replayable, device) -> None:
        """A step-graph capture (warm-up, or a bucket's next step after a graph reset; ``replayable``:
        :meth:`StepGraphs.replayable`): α auto's controller update
        as one replay from now on (:mod:`.controller_graph`), carrying over any state so far. Captured once: later
        batch buckets' captures find it there."""
        if self.focus is None or self.focus.auto is None or self.controller is not None:
            return
        from .controller_graph import GraphedController
        self.controller = GraphedController(self.focus.auto, device, replayable, state=self.alpha_state)
        self.alpha_state = self.controller.state

    def drop_controller_graph(self) -> None:
        """Upstream's graph reset: updates run eagerly (on the same state) until a capture (a wake-up's warm-up, or the
        next step of a batch bucket the reset dropped) captures the update again."""
        self.controller = None

    def _auto_update(self, decoded) -> dict:
        """Fold the shadow sequences' counts into the controller (device only); their stats columns."""
        counts = shadow_counts(decoded, self.step.focus, self.shadow_seq)
        # before the update: under the controller's graph the state changes in place
        fallback_steps = self.alpha_state.fallback & ~self.shadow_seq
        step_counts = counts['shadow_decoded'], counts['shadow_selected_decoded'], counts['shadow_random_expected']
        if self.controller is not None:
            self.alpha_state = self.controller.update(self.alpha_state, *step_counts)
        else:
            self.alpha_state = alpha_controller.update(self.alpha_state, self.focus.auto, *step_counts)
        return dict(counts, auto_shadow_steps=self.shadow_seq, auto_fallback_steps=fallback_steps)

    def after_unmasking(self, next_mask: torch.Tensor) -> torch.Tensor | None:
        """Device-side bookkeeping once the step's tokens are unmasked into ``next_mask`` (before the block may
        commit). With ``dllm_track``, returns the step's per-sequence counts (:func:`per_sequence_counts`).
        """
        step = self.step
        decoded = focus_state.newly_decoded(step.masked, next_mask)
        num_decoded = decoded.sum(dim=1)
        focus = step.focus
        auto_columns = {}
        if focus is not None:
            inputs = self.step_inputs
            inputs.focus_state = focus_state.record_step(inputs.focus_state, focus.progress_out, num_decoded)
            if self.shadow_seq is not None:
                auto_columns = self._auto_update(decoded)
        if self.stats is None:
            return None
        columns = dict(decode_steps=1,
                       generated_tokens=num_decoded,
                       processed_tokens=step.processed_per_seq,
                       deep_tokens=step.kept_per_seq)
        if focus is not None:
            columns.update(candidates=focus.num_candidates, kept_candidates=focus.num_kept_candidates)
            if self.focus.shadow:
                columns.update(shadow_counts(decoded, focus))
        columns.update(auto_columns)
        rows = per_sequence_counts(decoded.size(0), device=decoded.device, **columns)
        self.stats.add_rows(rows)
        return rows

    def after_stock_step(self, input_mask: torch.Tensor, next_mask: torch.Tensor) -> torch.Tensor | None:
        """A decode step that ran as upstream's stock step (``input_mask`` / ``next_mask``: ``[B*L]``, its input and
        unmasked masks): counted on the host; with ``dllm_track`` its per-sequence counts (every block row processed
        and deep, no FOCUS candidates), else None. The step inputs mark the state stale themselves."""
        self.stock_steps += 1
        if self.stats is None or input_mask is None:
            return None
        masked = input_mask.view(-1, self.block_length) == consts.DLLM_MASKED
        rows = whole_block_counts(focus_state.newly_decoded(masked, next_mask), stock_steps=1)
        self.stats.add_rows(rows)
        return rows

    def _count(self, step: DecodeStep) -> None:
        """Host-side row counters (free: the counts are host ints already), logged now and then."""
        self.steps += 1
        self.deep_rows += step.num_rows if step.deep_rows is None else step.deep_rows
        self.logit_rows += step.num_logit_rows
        self.dense_rows += step.batch_size * step.block_length
        if self.steps % self.log_every == 0:
            self._log_auto()
            stock = f' ({self.stock_steps} more ran as stock steps)' if self.stock_steps else ''
            logger.info(f'delayed cache: {self.steps} decode steps{stock}; per step {self.deep_rows / self.steps:.1f} rows '
                        f'through the deep layers ({self.deep_rows / max(self.dense_rows, 1):.1%} of the blocks), '
                        f'{self.logit_rows / self.steps:.1f} through the LM head.')

    def _log_auto(self) -> None:
        """--dllm-focus-alpha auto: α now and then; a warning once per episode of no eviction with the evidence
        in hand (probation that did not qualify the selection, then each fall-back; a host read every
        ``log_every`` steps, with this log line; the decode step itself never reads the controller)."""
        if self.alpha_state is None:
            return
        state, config = self.alpha_state, self.focus.auto
        alpha, fallback, fallbacks = float(state.alpha), bool(state.fallback), int(state.fallbacks)
        recall, random = (float(x) for x in alpha_controller.recalls(state))
        if fallback and int(state.since_switch) >= config.min_updates and fallbacks != self.logged_fallbacks:
            self.logged_fallbacks = fallbacks
            started = 'stopped' if fallbacks else 'not started'
            logger.warning(f'FOCUS alpha auto: the selection recalls {recall:.2f} of the decoded tokens vs {random:.2f} '
                           f'for a random subset of the same size (target {config.target_recall}, largest alpha '
                           f'{config.alpha_max}): eviction {started} for this model; shadow steps go on and it '
                           f'evicts once that changes.')
        logger.info(f'FOCUS alpha auto: alpha {alpha:.2f}, recall {recall:.3f} (random {random:.3f}), '
                    f'{"not evicting" if fallback else "evicting"}.')

    def auto_alpha_report(self) -> dict | None:
        """The controller's state on the host (one sync; for tests, tools and logs, never per step)."""
        if self.alpha_state is None:
            return None
        return alpha_controller.host_report(self.alpha_state)

    def row_logits(self, hidden_rows: torch.Tensor, lm_head) -> torch.Tensor:
        """``[M, V]`` logits of the step's rows that need them (``M = max(num_logit_rows, 1)``), in the
        order of :attr:`logit_slots` (their ``b*L+p`` slots).

        Only rows whose slot is still MASKED get logits (the unmasker reads nothing else: a decoded
        token being recomputed, or a block being committed, needs K/V, not logits). The sampler and
        the unmasker then work on these ``M`` rows too (:meth:`.DelayedCacheAgentStrategy.sampling_rows`),
        so no ``B*L x V`` tensor exists on the common path. A step where no row needs logits (every
        sequence commits) gets one zero row at slot 0, which the unmasker never reads (slot 0 is then
        not a masked slot with fresh logits), so the sampler never sees an empty batch.

        A sync-free step (:attr:`DecodeStep.sync_free`) has no ``M`` on the host: its ``hidden_rows`` are the
        ``B*L`` slots, and the head runs on all of them (:attr:`logit_slots` None: upstream's layout).
        """
        step = self.step
        if step.sync_free:  # by slot already (zero rows where no logits are needed): stock's B*L layout
            self.logit_slots = None
            return lm_head(hidden_rows)
        rows, count = step.rows, step.num_logit_rows
        index = rows.logit_rows[:count]
        self.logit_slots = rows.slot.index_select(0, index)
        if count == 0:
            self.logit_slots = torch.zeros(1, dtype=torch.long, device=hidden_rows.device)
            return lm_head(hidden_rows.new_zeros(1, hidden_rows.size(-1))).zero_()
        # One call: the [M, V] output is what the sampler needs anyway (chunks would only add a copy and a
        # chunk-sized temporary on top of it).
        return lm_head(hidden_rows.index_select(0, index))

    def dense_logits(self, row_logits: torch.Tensor) -> torch.Tensor:
        """``[B*L, V]``: ``row_logits`` at their slots, zeros elsewhere (for a batch the sampler cannot
        run on rows alone: logprobs, custom logits processors). Built per step, never kept."""
        step = self.step
        dense = row_logits.new_zeros(step.batch_size * step.block_length, row_logits.size(-1))
        return dense.index_copy_(0, self.logit_slots, row_logits)

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
        self.logit_slots = None
