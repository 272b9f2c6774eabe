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
    assert set(timer.read()['mean_ms']) == set(PHASES)
