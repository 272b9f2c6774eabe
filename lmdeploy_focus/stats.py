"""DLLM run statistics (``dllm_track``) of the engines running in this process.

    from lmdeploy_focus.stats import read_run_stats, derived_metrics
    totals = read_run_stats(reset=True)   # None if no engine with dllm_track has decoded in this process

Works for in-process engines (``pipeline``, the throughput driver; with TP > 1 the steps are counted in the worker
processes, so this process reads None); an ``api_server`` exposes them on its
Prometheus ``/metrics`` (``lmdeploy:dllm_*``, :mod:`lmdeploy_focus.serving.metrics`).
"""
from .strategies.dllm.phase_timer import live_phase_timers
from .strategies.dllm.run_stats import KEYS, live_run_stats


def read_run_stats(reset: bool = True) -> dict[str, float] | None:
    """Totals since the last reset over every tracking engine in this process (one sync)."""
    sources = live_run_stats()
    if not sources:
        return None
    totals = dict.fromkeys(KEYS, 0.0)
    for source in sources:
        for key, value in source.read(reset=reset).items():
            totals[key] += value
    return totals


def derived_metrics(totals: dict[str, float]) -> dict[str, float | None]:
    """Ratios a report shows: generated per step, processed/generated, kept fraction, recalls."""
    def ratio(a, b):
        return totals.get(a, 0.0) / totals[b] if totals.get(b) else None

    return dict(generated_per_step=ratio('generated_tokens', 'decode_steps'),
                processed_per_generated=ratio('deep_tokens', 'generated_tokens'),
                layer0_processed_per_generated=ratio('processed_tokens', 'generated_tokens'),
                kept_fraction=ratio('kept_candidates', 'candidates'),
                shadow_recall=ratio('shadow_selected_decoded', 'shadow_decoded'),
                random_recall=ratio('shadow_random_expected', 'shadow_decoded'))


def read_run_report(reset: bool = True) -> dict[str, float | None] | None:
    """:func:`read_run_stats` totals together with their :func:`derived_metrics` ratios (None without tracking)."""
    totals = read_run_stats(reset=reset)
    return None if totals is None else {**totals, **derived_metrics(totals)}


def read_phase_timing(reset: bool = True) -> list[dict]:
    """Mean and median ms per decode-step phase of each engine with ``LMDEPLOY_FOCUS_PHASE_TIMING=1``."""
    return [timer.read(reset=reset) for timer in live_phase_timers()]
