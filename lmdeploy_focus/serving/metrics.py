"""DLLM / FOCUS series on the api_server's Prometheus ``/metrics`` (issue 15, item 4).

Upstream's metrics system (``lmdeploy.metrics``): ``AsyncEngine.generate`` queues every engine output
with the request's ``RequestStats`` and a fresh ``IterationStats``; the api_server's metrics handler
task calls ``IterationStats.update_from_output(outputs, req_stats)`` and hands the stats to each
stat logger of ``metrics_processor.stat_loggers`` (``record_iteration``, and ``record_finish`` when the
request finishes); ``/metrics`` serves prometheus_client's default registry. Patch 13
(:mod:`lmdeploy_focus.patch.serve_metrics`) hooks in twice, and starts no exporter of its own:

* ``IterationStats.update_from_output`` is wrapped by :func:`wrap_update_from_output`: with
  ``dllm_track``, each output's ``req_metrics.dllm`` holds the request's running totals (patch 7,
  :mod:`lmdeploy_focus.strategies.dllm.request_stats`); the wrapper keeps the latest totals on the
  request's stats and puts the growth since the previous output on the iteration's stats. This runs
  in the metrics handler task, off the request's path, from what the output already carries (no
  engine-side work, no host-device sync).
* ``AsyncEngine._build_stat_loggers`` is wrapped by :func:`wrap_build_stat_loggers`: with metrics on
  and ``dllm_track`` on, a :class:`DLLMStatLogger` joins upstream's loggers. It registers its series in
  the default registry next to upstream's (same ``model_name`` / ``engine`` labels), so they come out of
  the same ``/metrics``.

Series (all ``lmdeploy:dllm_*``; counted over decode steps, prefill excluded, like ``--dllm-track``):

================================================= ========= =========================================
series                                            type      what feeds it (``req_metrics.dllm`` key)
================================================= ========= =========================================
``lmdeploy:dllm_generated_tokens_total``          counter   ``generated_tokens`` (tokens unmasked)
``lmdeploy:dllm_denoising_steps_total``           counter   ``decode_steps`` (sequence-steps)
``lmdeploy:dllm_rows_layers_0_1_total``           counter   ``processed_tokens`` (rows into layers 0-1)
``lmdeploy:dllm_rows_deep_layers_total``          counter   ``deep_tokens`` (rows through layers >= 2)
``lmdeploy:dllm_stock_steps_total``               counter   ``stock_steps`` (delayed cache / FOCUS on)
``lmdeploy:dllm_focus_candidates_total``          counter   ``candidates`` (FOCUS on)
``lmdeploy:dllm_focus_kept_candidates_total``     counter   ``kept_candidates`` (FOCUS on)
``lmdeploy:dllm_request_kept_fraction``           histogram per finished request, kept / candidates
``lmdeploy:dllm_shadow_decoded_tokens_total``     counter   ``shadow_decoded`` (shadow on)
``lmdeploy:dllm_shadow_selected_tokens_total``    counter   ``shadow_selected_decoded`` (shadow on)
``lmdeploy:dllm_shadow_random_expected_total``    counter   ``shadow_random_expected`` (shadow on)
``lmdeploy:dllm_request_shadow_recall``           histogram per finished request, selected / decoded
``lmdeploy:dllm_focus_auto_shadow_steps_total``   counter   ``auto_shadow_steps`` (α auto)
``lmdeploy:dllm_focus_auto_fallback_steps_total`` counter   ``auto_fallback_steps`` (α auto)
================================================= ========= =========================================

With ``--dllm-focus-alpha auto`` the shadow series count the controller's shadow steps (its recall
measurement), and a controller that does not evict (probation at start-up, or the selection no better
than random: nothing evicted) shows as
``rate(lmdeploy:dllm_focus_auto_fallback_steps_total[1m]) > 0``.

Ratios over time come from the counters in PromQL, e.g. the kept fraction
``rate(lmdeploy:dllm_focus_kept_candidates_total[1m]) / rate(lmdeploy:dllm_focus_candidates_total[1m])``
and the shadow recall ``rate(lmdeploy:dllm_shadow_selected_tokens_total[1m]) /
rate(lmdeploy:dllm_shadow_decoded_tokens_total[1m])``.
"""
import functools

from lmdeploy.metrics.loggers import StatLoggerBase

from ..config.options import OPTIONS_KEY, FocusOptions
from ..log import log_once, logger

PREFIX = 'lmdeploy:dllm_'
# attribute names on upstream's stats objects
REQUEST_TOTALS_ATTR = 'dllm'  # RequestStats: the request's latest req_metrics.dllm
ITERATION_DELTA_ATTR = 'dllm_delta'  # IterationStats: growth of the totals since the previous output

# counter name (without PREFIX and '_total') -> (req_metrics.dllm key, help); by the mode that fills them
CORE_COUNTERS = {
    'generated_tokens': ('generated_tokens', 'DLLM tokens unmasked in decode steps.'),
    'denoising_steps': ('decode_steps', 'DLLM denoising steps, summed over sequences (sequence-steps).'),
    'rows_layers_0_1': ('processed_tokens', 'DLLM rows forwarded through layers 0-1 in decode steps '
                        '(the whole block per step without delayed cache).'),
    'rows_deep_layers': ('deep_tokens', 'DLLM rows forwarded through layer 1\'s attention and MLP and layers >= 2 in decode '
                         'steps (after FOCUS eviction).'),
}
DELAYED_COUNTERS = {
    'stock_steps': ('stock_steps', 'DLLM sequence-steps run as stock decode steps (batches of at most '
                    '--dllm-stock-step-rows block rows): no delayed cache, no eviction.'),
}
FOCUS_COUNTERS = {
    'focus_candidates': ('candidates', 'Masked rows of the FOCUS processing sets (eviction candidates).'),
    'focus_kept_candidates': ('kept_candidates', 'Eviction candidates FOCUS kept past layer 1.'),
}
SHADOW_COUNTERS = {
    'shadow_decoded_tokens': ('shadow_decoded', 'FOCUS shadow mode: tokens decoded in steps where the candidates '
                              'outnumbered the target.'),
    'shadow_selected_tokens': ('shadow_selected_decoded', 'FOCUS shadow mode: of those, tokens the selection '
                               'had kept.'),
    'shadow_random_expected': ('shadow_random_expected', 'FOCUS shadow mode: expected number a random selection '
                               'of the same size would have kept.'),
}
AUTO_COUNTERS = {
    'focus_auto_shadow_steps': ('auto_shadow_steps', 'FOCUS alpha auto: sequence-steps run in shadow mode to '
                                'measure the selection (nothing evicted).'),
    'focus_auto_fallback_steps': ('auto_fallback_steps', 'FOCUS alpha auto: sequence-steps that evicted nothing '
                                  'because the selection has not shown (probation) or no longer shows a recall above '
                                  'a random one\'s and the target (fall-back).'),
}
# the totals whose growth feeds the counters (the engine's keys: strategies.dllm.run_stats.KEYS, not
# imported here: that package loads the engine's strategies, which the api_server process does not need)
DELTA_KEYS = tuple(key for table in (CORE_COUNTERS, DELAYED_COUNTERS, FOCUS_COUNTERS, SHADOW_COUNTERS, AUTO_COUNTERS)
                   for key, _ in table.values())
FRACTION_BUCKETS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def focus_options_of(config) -> FocusOptions:
    """The FOCUS options an engine config carries (defaults when none; our config subclass or a plain
    upstream one with ``hf_overrides['dllm_focus']``)."""
    try:
        overrides = getattr(config, 'hf_overrides', None) or {}
        data = overrides.get(OPTIONS_KEY) if isinstance(overrides, dict) else None
        return FocusOptions() if data is None else FocusOptions.from_dict(dict(data)).resolved()
    except (TypeError, ValueError):
        return FocusOptions()


class DLLMStatLogger(StatLoggerBase):
    """Prometheus series of the DLLM statistics; registered in the default registry (upstream's ``/metrics``).

    ``delayed`` adds the stock-step count, ``focus`` the eviction series, ``shadow`` the shadow-recall ones, ``auto`` (α auto: its shadow
    steps fill the shadow-recall series) those and the controller's (only filled in those modes).
    """

    def __init__(self, model_name: str, dp_rank: int = 0, focus: bool = False, shadow: bool = False,
                 auto: bool = False, delayed: bool = False):
        import prometheus_client

        shadow = shadow or auto
        counters = dict(CORE_COUNTERS)
        if delayed or focus or shadow:
            counters.update(DELAYED_COUNTERS)
        if focus or shadow:
            counters.update(FOCUS_COUNTERS)
        if shadow:
            counters.update(SHADOW_COUNTERS)
        if auto:
            counters.update(AUTO_COUNTERS)
        # an earlier engine's DLLM series, as upstream's PrometheusStatLogger drops every 'lmdeploy' collector
        # at its construction (which runs just before this one in AsyncEngine._build_stat_loggers)
        for collector in list(prometheus_client.REGISTRY._collector_to_names):
            if str(getattr(collector, '_name', '')).startswith(PREFIX):
                prometheus_client.REGISTRY.unregister(collector)

        labelnames = ['model_name', 'engine']
        labelvalues = [model_name, str(dp_rank)]
        self.counters = {}  # req_metrics.dllm key -> counter child
        for name, (key, documentation) in counters.items():
            self.counters[key] = prometheus_client.Counter(name=f'{PREFIX}{name}_total',
                                                           documentation=documentation,
                                                           labelnames=labelnames).labels(*labelvalues)

        def histogram(name, documentation):
            return prometheus_client.Histogram(name=PREFIX + name,
                                               documentation=documentation,
                                               buckets=FRACTION_BUCKETS,
                                               labelnames=labelnames).labels(*labelvalues)

        self.kept_fraction = histogram('request_kept_fraction', 'Per finished request: fraction of the FOCUS '
                                       'eviction candidates kept past layer 1.') if focus or shadow else None
        self.shadow_recall = histogram('request_shadow_recall', 'Per finished request (FOCUS shadow mode): '
                                       'fraction of the decoded tokens the selection had kept.') if shadow else None

    def record_schedule(self, stats) -> None:
        pass

    def record_specdecode(self, stats) -> None:
        pass

    def record_iteration(self, stats) -> None:
        delta = getattr(stats, ITERATION_DELTA_ATTR, None)
        if not delta:
            return
        for key, counter in self.counters.items():
            value = delta.get(key, 0.0)
            if value > 0:
                counter.inc(value)

    def record_finish(self, stats) -> None:
        totals = getattr(stats, REQUEST_TOTALS_ATTR, None)
        if not totals:
            return
        if self.kept_fraction is not None and totals.get('candidates', 0) > 0:
            self.kept_fraction.observe(totals['kept_candidates'] / totals['candidates'])
        if self.shadow_recall is not None and totals.get('shadow_decoded', 0) > 0:
            self.shadow_recall.observe(totals['shadow_selected_decoded'] / totals['shadow_decoded'])


def dllm_totals(outputs) -> dict | None:
    """The request's DLLM totals an engine output carries (``req_metrics.dllm``, patch 7), or None."""
    req_metrics = getattr(outputs, 'req_metrics', None)
    totals = getattr(req_metrics, 'dllm', None) if req_metrics is not None else None
    return totals if isinstance(totals, dict) else None


def wrap_update_from_output(upstream):
    """``IterationStats.update_from_output``: upstream's, then the DLLM totals' growth since the
    request's previous output (totals are per request and cumulative; an output may stand for several
    engine steps)."""

    @functools.wraps(upstream)
    def update_from_output(self, outputs, req_stats):
        result = upstream(self, outputs, req_stats)
        try:
            totals = dllm_totals(outputs)
            if totals is not None:
                previous = getattr(req_stats, REQUEST_TOTALS_ATTR, None) or {}
                setattr(self, ITERATION_DELTA_ATTR,
                        {key: max(0.0, float(totals.get(key) or 0.0) - float(previous.get(key) or 0.0))
                         for key in DELTA_KEYS})
                setattr(req_stats, REQUEST_TOTALS_ATTR, totals)
        except Exception:  # statistics never fail upstream's metrics handler
            logger.exception('dllm metrics: could not read the DLLM statistics of an output')
        return result

    update_from_output.__lmdeploy_focus_upstream__ = upstream
    return update_from_output


def add_dllm_stat_logger(async_engine) -> DLLMStatLogger | None:
    """After upstream built its stat loggers: the DLLM one, with metrics and ``dllm_track`` on."""
    config = getattr(async_engine, 'backend_config', None)
    if not getattr(config, 'enable_metrics', False) or getattr(async_engine, 'backend', None) != 'pytorch':
        return None
    options = focus_options_of(config)
    if not options.track:
        if options.uses_sparse_decode:
            log_once('Delayed cache / FOCUS without dllm_track: /metrics has no lmdeploy:dllm_* series '
                     '(set dllm_track=True; `lmdeploy serve api_server` turns it on by itself unless '
                     '--disable-metrics).')
        return None
    dp_rank = getattr(config, 'dp_rank', 0) or 0
    stat_logger = DLLMStatLogger(model_name=async_engine.model_name,
                                 dp_rank=dp_rank,
                                 focus=options.enable_focus,
                                 shadow=options.focus_shadow,
                                 auto=options.enable_focus and options.auto_alpha,
                                 delayed=options.enable_delayed_cache)
    # upstream handed metrics_processor this same list object
    async_engine.stat_loggers.append(stat_logger)
    return stat_logger


def wrap_build_stat_loggers(upstream):

    @functools.wraps(upstream)
    def _build_stat_loggers(self):
        upstream(self)
        add_dllm_stat_logger(self)

    _build_stat_loggers.__lmdeploy_focus_upstream__ = upstream
    return _build_stat_loggers
