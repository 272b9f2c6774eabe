"""Per-request DLLM statistics (``dllm_track``): the run statistics' counts, per sequence.

Path of a step's counts: the agent strategy gets them per sequence from the step's bookkeeping
(``float32 [B, K]``, :func:`.run_stats.per_sequence_counts`) and puts them in the step's extra
outputs, which upstream already copies to the host with the sampled tokens (no extra sync);
:class:`TrackingDLLMSequenceStrategy` adds each row to its sequence; the engine loop's output
builder (patch 7) hands the totals to the request as ``EngineOutput.req_metrics.dllm``::

    async for out in engine_instance.async_stream_infer(session_id, input_ids, gen_config):
        out.req_metrics.dllm  # {'decode_steps': ..., 'deep_tokens': ..., 'processed_per_generated': ...}

Counted over the request's decode steps (its prefill step excluded), like the run totals.
"""
from dataclasses import dataclass, fields

import numpy as np
import torch

from lmdeploy.messages import RequestMetrics
from lmdeploy.pytorch.messages import MessageStatus
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraOutputs

from ...stats import derived_metrics
from ...log import logger
from .run_stats import KEYS
from .upstream_fixes import FixedDLLMSequenceStrategy

# attribute of upstream's SchedulerSequence that holds the request's running totals
SEQUENCE_ATTR = 'dllm_request_stats'


@dataclass
class TrackedDLLMExtraOutputs(DLLMExtraOutputs):
    """Upstream's DLLM step outputs plus the step's counts per sequence (None: nothing tracked)."""
    dllm_stats: torch.Tensor | None = None


@dataclass
class DLLMRequestMetrics(RequestMetrics):
    """Upstream's request metrics plus the request's DLLM statistics so far (totals and ratios)."""
    dllm: dict | None = None


class RequestStats:
    """Running totals of one request, in the order of :data:`.run_stats.KEYS`.

    ``owner``: the request's upstream ``Response`` (``seq.resp``). A session's sequence is reused by
    its next request (interactive / multi-turn), which gets a new ``Response``; totals owned by an
    earlier one are not that request's.
    """

    def __init__(self, owner=None):
        self.totals = np.zeros(len(KEYS), dtype=np.float64)
        self.owner = owner

    def add(self, row) -> None:
        self.totals += np.asarray(row, dtype=np.float64)

    def as_dict(self) -> dict:
        totals = dict(zip(KEYS, self.totals.tolist()))
        return {**totals, **derived_metrics(totals)}


class StepStatsOutputs:
    """Agent-strategy mixin (put it first in the bases): the step's per-sequence counts, handed to
    :meth:`keep_step_stats` during post-sampling, leave with the step's extra outputs."""

    _step_stats: torch.Tensor | None = None

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        self._step_stats = None  # counts of a step whose outputs were never made must not ride later
        return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)

    def keep_step_stats(self, rows: torch.Tensor | None) -> None:
        self._step_stats = rows

    def make_extra_outputs(self, extra_inputs):
        out = super().make_extra_outputs(extra_inputs)
        rows, self._step_stats = self._step_stats, None
        if rows is None:
            return out
        return TrackedDLLMExtraOutputs(**{f.name: getattr(out, f.name) for f in fields(out)}, dllm_stats=rows)


class TrackingDLLMSequenceStrategy(FixedDLLMSequenceStrategy):
    """Upstream's DLLM sequence update, then each running sequence's share of the step's counts."""

    def update_running(self, running, batched_outputs, model_inputs, delta, **kwargs) -> None:
        was_running = [seq.status == MessageStatus.RUNNING for seq in running]
        super().update_running(running, batched_outputs, model_inputs, delta, **kwargs)
        rows = getattr(batched_outputs.extra_outputs, 'dllm_stats', None)
        if rows is None:
            return
        rows = np.asarray(rows.numpy() if isinstance(rows, torch.Tensor) else rows)
        if rows.shape[0] != len(running):
            # never kill the engine loop over statistics: drop this step's rows, say so once
            if not getattr(self, '_warned_mismatch', False):
                self._warned_mismatch = True
                logger.warning(f'dllm_track: {rows.shape[0]} rows of step statistics for {len(running)} '
                               'sequences; dropped (per-request statistics of this run are incomplete).')
            return
        for seq, active, row in zip(running, was_running, rows):
            if not active:
                continue
            stats = getattr(seq, SEQUENCE_ATTR, None)
            owner = getattr(seq, 'resp', None)
            if stats is None or stats.owner is not owner:  # first step of this request
                stats = RequestStats(owner)
                setattr(seq, SEQUENCE_ATTR, stats)
            stats.add(row)


def attach_request_stats(outputs: dict, running, tracked: bool) -> dict:
    """Give each output of a tracked engine's sequence :class:`DLLMRequestMetrics` with its totals (in place).

    ``tracked``: the engine counts (its sequence strategy is :class:`TrackingDLLMSequenceStrategy`). A request
    with nothing counted yet gets zeros: one that ends in its prefill step (the prompt's last partial block
    completed there, e.g. ``max_new_tokens`` within it) has no decode step, and its ``req_metrics.dllm`` was missing.
    """
    if not tracked:
        return outputs
    for seq in running:
        stats = getattr(seq, SEQUENCE_ATTR, None)
        owner = getattr(seq, 'resp', None)
        if stats is None or stats.owner is not owner:  # an earlier request's totals are not this one's
            stats = RequestStats(owner)
        out = outputs.get(seq.session_id)
        if out is None:
            continue
        base = out.req_metrics or RequestMetrics()
        out.req_metrics = DLLMRequestMetrics(**{f.name: getattr(base, f.name) for f in fields(RequestMetrics)},
                                             dllm=stats.as_dict())
    return outputs
