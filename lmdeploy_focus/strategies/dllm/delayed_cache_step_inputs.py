"""Upstream's device-resident DLLM decode state (with the plugin's fixes) plus the per-sequence
delayed-cache and FOCUS state."""
from dataclasses import dataclass, field

import numpy as np
import torch

from ...models.step_state import focus_state as focus
from ...models.step_state import shadow_schedule
from ...models.step_state.delayed_cache_state import (DelayedCacheState, append_fresh, reset_rows, select,
                                                     starts_new_block)
from .upstream_fixes import FixedDLLMStepInputs


@dataclass
class DelayedCacheStepInputs(FixedDLLMStepInputs):
    delayed_state: DelayedCacheState | None = field(default=None, repr=False)
    focus_state: focus.FocusState | None = field(default=None, repr=False)
    # FOCUS on: its per-sequence state is kept (off, delayed cache alone: focus_state stays None, so no step pays
    # for a state nothing reads). The factory sets it from the engine's FOCUS config.
    tracks_focus: bool = True
    # --dllm-focus-alpha auto: int64 [B] steps until each sequence's next shadow step (shadow_schedule)
    shadow_countdown: object = field(default=None, repr=False)
    shadow_period: int = 0  # 0: auto is off, no countdown kept
    shadow_seed: int = 0
    joined: int = 0  # sequences that joined so far (their schedule phases)
    # FOCUS: the next decode step processes at most this many rows (None: unknown, all B*L), so its layers
    # 0-1 run on a row bucket of that size (StepGraphs). The last step's bound, plus L per sequence joined
    # since; sequences that leave only make it looser.
    next_rows_bound: int | None = None
    # --dllm-stock-step-rows: whether a decode batch of B sequences runs upstream's stock step (the factory sets it to
    # DelayedCacheRuntime.stock_batch, the one rule; None: never). A stock step keeps none of the state above up to
    # date, so it marks the state stale and the next delayed-cache step starts every sequence afresh.
    stock_rule: object = field(default=None, repr=False)
    state_stale: bool = False

    def stock_step(self, batch_size: int) -> bool:
        return self.stock_rule is not None and self.stock_rule(batch_size)

    def fresh_state_if_stale(self) -> None:
        """Before a delayed-cache step: after stock steps every sequence restarts as a joining one does, its whole
        block processed once (a warm-up: exact K/V whatever the stock steps decoded or committed), FOCUS's
        running state from a block's start."""
        if not self.state_stale:
            return
        self.state_stale = False
        batch, device = self.delayed_state.batch_size, self.delayed_state.device
        self.delayed_state = DelayedCacheState.fresh(batch, self._block_size, device=device)
        if self.focus_state is not None:
            self.focus_state = focus.FocusState.fresh(batch, device=device)
        self.next_rows_bound = None  # unknown: the front runs on every block row

    def merge_prefill(self, inputs, extra_inputs, stopping_criteria, sampling_delta, next_token_ids, model_metas,
                      extra_outputs):
        super().merge_prefill(inputs, extra_inputs, stopping_criteria, sampling_delta, next_token_ids, model_metas,
                              extra_outputs)
        # New sequences start their first decode step with a warm-up over the whole block.
        num_new, device = inputs.seq_length.numel(), next_token_ids.device
        if self.next_rows_bound is not None:
            self.next_rows_bound += num_new * self._block_size  # a new sequence's first step: the whole block
        self.delayed_state = (DelayedCacheState.fresh(num_new, self._block_size, device=device)
                              if self.delayed_state is None else append_fresh(self.delayed_state, num_new))
        if self.tracks_focus:
            self.focus_state = (focus.FocusState.fresh(num_new, device=device)
                                if self.focus_state is None else focus.append_fresh(self.focus_state, num_new))
        if self.shadow_period:
            countdown = shadow_schedule.fresh(num_new, self.shadow_period, self.shadow_seed, self.joined, device)
            self.shadow_countdown = (countdown if self.shadow_countdown is None else
                                     torch.cat([self.shadow_countdown, countdown]))
            self.joined += num_new

    def reindex(self, delta):
        super().reindex(delta)
        if _keeps_the_batch(delta, self.delayed_state):  # upstream's usual decode delta: no row to move
            return
        self.delayed_state = select(self.delayed_state, delta.indices)
        if self.focus_state is not None:
            self.focus_state = focus.select(self.focus_state, delta.indices)
        if self.shadow_countdown is not None:
            self.shadow_countdown = self.shadow_countdown.index_select(0, delta.indices)

    def step_decode(self, model_inputs, extra_inputs, stopping_criteria, sampling_delta, next_token_ids, model_metas,
                    extra_outputs):
        if self.delayed_state is not None and self.stock_step(self.delayed_state.batch_size):
            self.state_stale = True  # no device work: the next delayed-cache step starts afresh
            return super().step_decode(model_inputs, extra_inputs, stopping_criteria, sampling_delta, next_token_ids,
                                       model_metas, extra_outputs)
        # The unmasker flags a finished block CACHED; upstream then starts a fresh block.
        committed = starts_new_block(extra_inputs.dllm_mask, self._block_size)
        super().step_decode(model_inputs, extra_inputs, stopping_criteria, sampling_delta, next_token_ids, model_metas,
                            extra_outputs)
        self.delayed_state = reset_rows(self.delayed_state, committed)
        if self.focus_state is not None:
            self.focus_state = focus.reset_rows(self.focus_state, committed)


def _keeps_the_batch(delta, state) -> bool:
    """Whether ``delta`` keeps every sequence in its place, read on the host (``indice_cpu``, upstream's host copy
    of the indices): upstream sends a delta every decode step, and most steps nobody leaves."""
    kept = getattr(delta, 'indice_cpu', None)
    return (state is not None and kept is not None and len(kept) == state.batch_size
            and bool((np.asarray(kept) == np.arange(len(kept))).all()))
