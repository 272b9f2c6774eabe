"""dllm_track run statistics: device accumulation, reading across engines, derived ratios."""
import gc

import pytest
import torch

from lmdeploy_focus.stats import derived_metrics, read_run_stats
from lmdeploy_focus.strategies.dllm.run_stats import KEYS, RunStats


def test_accumulates_tensors_and_numbers_and_resets():
    gc.collect()
    read_run_stats(reset=True)
    stats = RunStats()
    stats.add(decode_steps=4, generated_tokens=torch.tensor(6), processed_tokens=torch.tensor(40), deep_tokens=12)
    stats.add(decode_steps=4, generated_tokens=torch.tensor(2), processed_tokens=torch.tensor(24), deep_tokens=10)
    totals = read_run_stats(reset=True)
    assert set(totals) == set(KEYS)
    assert (totals['decode_steps'], totals['generated_tokens'], totals['deep_tokens']) == (8, 8, 22)
    assert read_run_stats(reset=False)['decode_steps'] == 0
    with pytest.raises(KeyError, match='unknown'):
        stats.add(tokens=1)


def test_a_process_whose_stats_never_count_reads_none():
    """The engine process builds a strategy factory (and its RunStats) that never sees a step when the model runs
    in worker processes (TP > 1): reading gave zeros instead of None ("no tracking engine here"). Found by a
    bug-hunting review."""
    gc.collect()
    read_run_stats(reset=True)
    unfed = RunStats()
    assert read_run_stats(reset=False) is None
    fed = RunStats()
    fed.add(decode_steps=3)
    assert read_run_stats(reset=True)['decode_steps'] == 3
    assert read_run_stats(reset=False) == dict.fromkeys(KEYS, 0.0)  # tracking, nothing since the reset
    del unfed, fed


def test_derived_metrics():
    totals = dict.fromkeys(KEYS, 0.0)
    totals.update(decode_steps=10, generated_tokens=30, processed_tokens=120, deep_tokens=45, candidates=80,
                  kept_candidates=20, shadow_decoded=20, shadow_selected_decoded=19, shadow_random_expected=8)
    d = derived_metrics(totals)
    assert d['generated_per_step'] == 3.0 and d['processed_per_generated'] == 1.5
    assert d['kept_fraction'] == 0.25 and d['shadow_recall'] == 0.95 and d['random_recall'] == 0.4
    assert derived_metrics(dict.fromkeys(KEYS, 0.0))['shadow_recall'] is None


def test_phase_timer_is_off_by_default_and_reads_empty(monkeypatch):
    from lmdeploy_focus.strategies.dllm.phase_timer import PHASES, PhaseTimer, phase_timing_requested
    monkeypatch.delenv('LMDEPLOY_FOCUS_PHASE_TIMING', raising=False)
    assert not phase_timing_requested()
    monkeypatch.setenv('LMDEPLOY_FOCUS_PHASE_TIMING', '1')
    assert phase_timing_requested()
    timer = PhaseTimer()
    timer.start(), timer.finish()  # on CPU no events are recorded, so nothing is counted
    assert timer.read()['steps'] == (1 if torch.cuda.is_available() else 0)
    assert set(timer.read()['mean_ms']) == set(PHASES) == set(timer.read()['median_ms'])


def test_phase_timer_median_host_gap_ignores_the_prefill_outliers():
    import random

    from lmdeploy_focus.strategies.dllm.phase_timer import PHASES, PhaseTimer
    timer = PhaseTimer()
    rng = random.Random()
    steps = [{p: rng.uniform(0.1, 5.0) for p in PHASES if p != 'host_gap'} for _ in range(9)]
    gaps = [None, 2.0, 2.5, 80.0, 1.5, 3.0, 90.0, 2.2, 2.8]  # first step: no gap; two prefill-sized gaps
    for ms, gap in zip(steps, gaps):
        timer.record_step(ms, gap)
    got = timer.read(reset=True)
    assert got['steps'] == 9
    measured = sorted(g for g in gaps if g is not None)
    assert got['median_ms']['host_gap'] == (measured[3] + measured[4]) / 2 < 3.0  # the 80 / 90 ms gaps do not move it
    assert abs(got['mean_ms']['host_gap'] - sum(measured) / 8) < 1e-9
    for p in PHASES:
        if p != 'host_gap':
            assert abs(got['mean_ms'][p] - sum(s[p] for s in steps) / 9) < 1e-9
            assert got['median_ms'][p] == sorted(s[p] for s in steps)[4]
    assert timer.read()['steps'] == 0 and timer.read()['median_ms']['front'] == 0.0


def _race(engine, reader):
    """Run the engine's and a reader's thread side by side, switching threads as often as possible (the races showed
    within a few thousand steps)."""
    import sys
    import threading
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=engine), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)


def test_reading_with_reset_while_the_engine_adds_loses_and_repeats_nothing():
    """pipeline() runs the engine on its own thread while the user's thread reads (and resets) the totals: every
    step's counts must come back exactly once over the reads."""
    import threading

    from lmdeploy_focus.strategies.dllm.run_stats import RunStats, per_sequence_counts
    stats, steps, done, got = RunStats(), 5000, threading.Event(), []
    row = per_sequence_counts(1, decode_steps=1)

    def engine():
        for _ in range(steps):
            stats.add_rows(row)
        done.set()

    def reader():
        while not done.is_set():
            got.append(stats.read(reset=True)['decode_steps'])

    _race(engine, reader)
    got.append(stats.read(reset=True)['decode_steps'])
    assert sum(got) == steps and len(got) > 1


def test_phase_timer_read_while_the_engine_records_steps():
    """A reader's thread (stats.read_phase_timing) reads and resets while the engine's thread records steps: no
    read fails and every step is counted exactly once over the reads."""
    import threading

    from lmdeploy_focus.strategies.dllm.phase_timer import PHASES, PhaseTimer
    timer, steps, done, counted, errors = PhaseTimer(), 20000, threading.Event(), [], []
    ms = dict.fromkeys((p for p in PHASES if p != 'host_gap'), 1.0)

    def engine():
        for _ in range(steps):
            timer.record_step(ms, 1.0)
        done.set()

    def reader():
        while not done.is_set():
            try:
                counted.append(timer.read(reset=True)['steps'])
            except RuntimeError as e:  # 'deque mutated during iteration' without the lock
                errors.append(e)

    _race(engine, reader)
    counted.append(timer.read(reset=True)['steps'])
    assert not errors and sum(counted) == steps and len(counted) > 1


def test_run_stats_read_waits_for_the_device_before_copying(monkeypatch):
    """The totals' sums are queued on the engine's stream; a reader on another thread must wait for the device before
    its copy (its own stream's copy would not wait for them)."""
    events = []

    class DeviceTotals:  # a CUDA tensor's stand-in on a machine without one
        is_cuda, device = True, 'cuda:0'

        def tolist(self):
            events.append('copy')
            return [float(i) for i in range(len(KEYS))]

    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: events.append(('synchronize', device)))
    stats = RunStats()
    stats._totals = DeviceTotals()
    assert stats.read(reset=True) == {k: float(i) for i, k in enumerate(KEYS)}
    assert events == [('synchronize', 'cuda:0'), 'copy']
    assert stats.read() == dict.fromkeys(KEYS, 0.0)
