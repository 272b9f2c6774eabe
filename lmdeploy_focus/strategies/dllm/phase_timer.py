"""Per-phase GPU time of delayed-cache / FOCUS decode steps, for profiling only.

``LMDEPLOY_FOCUS_PHASE_TIMING=1`` records a CUDA event at each phase boundary of a decode step and
synchronises once at the end of the step to read them (so timing mode itself adds one sync per
step; never on by default). Phases, in step order::

    front            filling the step's inputs, processing set; FOCUS: embedding, layer 0, layer 1 up
                     to its K/V write, importance, selection, compaction (one graph under CUDA graphs)
    row_count_read   GPU idle while the host reads the row counts and launches the deep part
    deep_layers      layer 1 attention + MLP for the kept rows, layers 2..N-1, final norm (without
                     FOCUS: every layer on the processed rows)
    lm_head          LM head on the rows that need logits (FOCUS: kept rows still masked)
    sampling         logits processing and sampling of those rows
    unmasking        guarded unmasking + bookkeeping
    host_gap         from the end of one step to the start of the next (scheduler, inputs, launch)

Read with :func:`lmdeploy_focus.stats.read_phase_timing`: per phase the mean and the median over the
last :data:`RECORDED_STEPS` steps (a long profiled run keeps bounded memory). The mean of ``host_gap`` includes the prefill forwards the engine interleaves between decode
steps; its median is the steady-state host work between two decode steps.
"""
import statistics
import threading
import time
import weakref
from collections import deque

import torch

from ...config.env_switch import env_switch

PHASE_TIMING_ENV = 'LMDEPLOY_FOCUS_PHASE_TIMING'
PHASES = ('front', 'row_count_read', 'deep_layers', 'lm_head', 'sampling', 'unmasking', 'host_gap')
RECORDED_STEPS = 100_000

_LIVE = weakref.WeakSet()
_LOCK = threading.Lock()


def phase_timing_requested() -> bool:
    return env_switch(PHASE_TIMING_ENV)


class PhaseTimer:

    def __init__(self):
        self._per_step: deque[dict[str, float]] = deque(maxlen=RECORDED_STEPS)  # ms per phase of each step
        self._steps_lock = threading.Lock()  # the engine's thread appends, a reader's thread reads and resets
        self.steps = 0  # finished steps since the last reset
        self._marks: list[tuple[str, torch.cuda.Event]] = []
        self._gap_ms: float | None = None
        self._last_end: float | None = None
        with _LOCK:
            _LIVE.add(self)

    def mark(self, boundary: str) -> None:
        """Record the end of phase ``boundary`` (or 'start') on the current stream."""
        if not torch.cuda.is_available():
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._marks.append((boundary, event))

    def start(self) -> None:
        now = time.perf_counter()
        self._gap_ms = None if self._last_end is None else (now - self._last_end) * 1e3
        self._marks = []
        self.mark('start')

    def finish(self) -> None:
        if not self._marks:
            return
        self.mark('unmasking')
        self._marks[-1][1].synchronize()
        ms = dict.fromkeys(PHASES, 0.0)
        for (_, before), (name, after) in zip(self._marks, self._marks[1:]):
            ms[name] += before.elapsed_time(after)
        self.record_step(ms, self._gap_ms)
        self._marks = []
        self._last_end = time.perf_counter()

    def record_step(self, phase_ms: dict[str, float], host_gap_ms: float | None) -> None:
        """One finished step: GPU ms per phase, and the host gap before it (None for the first step)."""
        with self._steps_lock:
            self._per_step.append({**phase_ms, 'host_gap': host_gap_ms})
            self.steps += 1

    def read(self, reset: bool = False) -> dict:
        with self._steps_lock:
            per_step, steps = list(self._per_step), self.steps
            if reset:
                self._per_step.clear()
                self.steps = 0
        mean_ms, median_ms = {}, {}
        for phase in PHASES:
            values = [step[phase] for step in per_step if step[phase] is not None]
            mean_ms[phase] = statistics.fmean(values) if values else 0.0
            median_ms[phase] = statistics.median(values) if values else 0.0
        return dict(steps=steps, mean_ms=mean_ms, median_ms=median_ms)


def live_phase_timers() -> list[PhaseTimer]:
    with _LOCK:
        return list(_LIVE)
