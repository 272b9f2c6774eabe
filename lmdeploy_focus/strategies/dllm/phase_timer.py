"""Per-phase GPU time of delayed-cache / FOCUS decode steps, for profiling only.

``LMDEPLOY_FOCUS_PHASE_TIMING=1`` records a CUDA event at each phase boundary of a decode step and
synchronises once at the end of the step to read them (so timing mode itself adds one sync per
step; never on by default). Phases, in step order::

    front            filling the step's inputs, processing set; FOCUS: embedding, layer 0, layer 1 up
                     to its K/V write, importance, selection, compaction (one graph under CUDA graphs)
    row_count_read   GPU idle while the host reads the row counts and launches the deep part
    deep_layers      layer 1 attention + MLP for the kept rows, layers 2..N-1, final norm (without
                     FOCUS: every layer on the processed rows)
    lm_head          LM head on the rows that need logits + scatter to B*L
    sampling         upstream's logits processing and sampling over B*L rows
    unmasking        guarded unmasking + bookkeeping
    host_gap         from the end of one step to the start of the next (scheduler, inputs, launch)

Read with :func:`lmdeploy_focus.stats.read_phase_timing`.
"""
import os
import threading
import time
import weakref

import torch

PHASE_TIMING_ENV = 'LMDEPLOY_FOCUS_PHASE_TIMING'
PHASES = ('front', 'row_count_read', 'deep_layers', 'lm_head', 'sampling', 'unmasking', 'host_gap')

_LIVE = weakref.WeakSet()
_LOCK = threading.Lock()


def phase_timing_requested() -> bool:
    return os.environ.get(PHASE_TIMING_ENV, '') == '1'


class PhaseTimer:

    def __init__(self):
        self.totals_ms = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._marks: list[tuple[str, torch.cuda.Event]] = []
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
        if self._last_end is not None:
            self.totals_ms['host_gap'] += (now - self._last_end) * 1e3
        self._marks = []
        self.mark('start')

    def finish(self) -> None:
        if not self._marks:
            return
        self.mark('unmasking')
        self._marks[-1][1].synchronize()
        for (_, before), (name, after) in zip(self._marks, self._marks[1:]):
            self.totals_ms[name] += before.elapsed_time(after)
        self.steps += 1
        self._marks = []
        self._last_end = time.perf_counter()

    def read(self, reset: bool = False) -> dict:
        result = dict(steps=self.steps, mean_ms={k: v / max(self.steps, 1) for k, v in self.totals_ms.items()})
        if reset:
            self.totals_ms = dict.fromkeys(PHASES, 0.0)
            self.steps = 0
        return result


def live_phase_timers() -> list[PhaseTimer]:
    with _LOCK:
        return list(_LIVE)
