"""Issue 15, item 4: the DLLM / FOCUS series on the api_server's Prometheus ``/metrics``
(``lmdeploy_focus.serving.metrics``, patch 13).

End to end through upstream's real api_server (``serve()``, ``AsyncEngine.generate``, the metrics
handler task, ``mount_metrics``) over the fake backend of ``lmdeploy_focus_dev.testing.fake_serving``, whose
outputs here carry ``req_metrics.dllm`` built by the engine side's own code (``RequestStats`` rows,
``attach_request_stats``); ``/metrics`` is scraped and parsed.
"""
import os
import time
from types import SimpleNamespace

import pytest

from lmdeploy_focus.serving.metrics import (DLLMStatLogger, add_dllm_stat_logger, focus_options_of,
                                            wrap_update_from_output)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')

# two engine steps' worth of per-sequence counts per request (run_stats.KEYS order), like the agent
# strategy's rows; the request's totals after each output are their running sums
STEP_ROWS = [
    dict(decode_steps=4, generated_tokens=3, processed_tokens=128, deep_tokens=40, candidates=100, kept_candidates=30,
         shadow_decoded=3, shadow_selected_decoded=2, shadow_random_expected=0.9),
    dict(decode_steps=2, generated_tokens=2, processed_tokens=60, deep_tokens=20, candidates=40, kept_candidates=10,
         shadow_decoded=2, shadow_selected_decoded=2, shadow_random_expected=0.5),
]
PER_REQUEST = {key: sum(row[key] for row in STEP_ROWS) for key in STEP_ROWS[0]}
SERIES = {  # series -> req_metrics.dllm key
    'lmdeploy:dllm_generated_tokens_total': 'generated_tokens',
    'lmdeploy:dllm_denoising_steps_total': 'decode_steps',
    'lmdeploy:dllm_rows_layers_0_1_total': 'processed_tokens',
    'lmdeploy:dllm_rows_deep_layers_total': 'deep_tokens',
    'lmdeploy:dllm_focus_candidates_total': 'candidates',
    'lmdeploy:dllm_focus_kept_candidates_total': 'kept_candidates',
    'lmdeploy:dllm_shadow_decoded_tokens_total': 'shadow_decoded',
    'lmdeploy:dllm_shadow_selected_tokens_total': 'shadow_selected_decoded',
    'lmdeploy:dllm_shadow_random_expected_total': 'shadow_random_expected',
}
CORE = list(SERIES)[:4]
NUM_REQUESTS = 3


def dllm_outputs(session_id, tokens):
    """The engine's two outputs of one request, with ``req_metrics`` as patch 7 builds them."""
    from lmdeploy.messages import EngineOutput, RequestMetrics, ResponseType

    from lmdeploy_focus.strategies.dllm.request_stats import RequestStats, attach_request_stats
    from lmdeploy_focus.strategies.dllm.run_stats import KEYS

    owner = object()
    seq = SimpleNamespace(session_id=session_id, resp=owner, dllm_request_stats=RequestStats(owner))
    outputs = []
    for status, row, chunk in ((ResponseType.SUCCESS, STEP_ROWS[0], tokens[:1]),
                               (ResponseType.FINISH, STEP_ROWS[1], tokens[1:])):
        seq.dllm_request_stats.add([row.get(key, 0.0) for key in KEYS])  # columns the rows leave out are 0
        out = SimpleNamespace(req_metrics=RequestMetrics(time.time(), []))
        attach_request_stats({session_id: out}, [seq], tracked=True)
        outputs.append(EngineOutput(status, chunk, req_metrics=out.req_metrics))
    return outputs


def parse_metrics(text: str) -> dict:
    """``{(name, frozenset(labels)): value}`` of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    labels = {'model_name': 'm', 'engine': '0', **labels}
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope='module')
def metrics_server():
    from fastapi.testclient import TestClient

    from lmdeploy.messages import PytorchEngineConfig
    from lmdeploy.metrics.metrics_processor import metrics_processor

    from lmdeploy_focus_dev.testing import fake_serving

    async def async_stream_infer(self, session_id, input_ids, gen_config=None, **kwargs):
        self.engine.seen.append((session_id, list(input_ids), gen_config))
        for out in dllm_outputs(session_id, list(reversed(input_ids))[:gen_config.max_new_tokens]):
            yield out

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(fake_serving.FakeInstance, 'async_stream_infer', async_stream_infer)
        config = PytorchEngineConfig(max_batch_size=8, enable_metrics=True, dllm_track=True, dllm_focus_shadow=True)
        app = fake_serving.build_app(MODEL, mp, backend_config=config)
        with TestClient(app) as client:
            yield client
    finally:
        mp.undo()
        # the singleton stays "on" after the server's lifespan; later servers without metrics must not queue
        metrics_processor.enable_metrics = False
        metrics_processor.metrics_queue = None


def scrape_until(client, done, timeout=10.0):
    """``/metrics`` once the metrics handler task has caught up (it drains its queue asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get('/metrics')
        assert response.status_code == 200
        samples = parse_metrics(response.text)
        if done(samples) or time.monotonic() > deadline:
            return response.text, samples
        time.sleep(0.05)


def test_focus_series_on_metrics_after_requests(metrics_server):
    client = metrics_server
    before = parse_metrics(client.get('/metrics').text)
    for name in SERIES:  # present, at zero, before any request
        assert value(before, name) == 0.0, name
    for i in range(NUM_REQUESTS):
        body = dict(model='m', prompt=f'hello number {i}', max_tokens=4, stream=i == 0)
        response = client.post('/v1/completions', json=body)
        assert response.status_code == 200, response.text

    text, samples = scrape_until(
        client, lambda s: value(s, 'lmdeploy:dllm_request_shadow_recall_count') == NUM_REQUESTS)
    for name, key in SERIES.items():
        assert value(samples, name) == pytest.approx(NUM_REQUESTS * PER_REQUEST[key]), name

    kept = PER_REQUEST['kept_candidates'] / PER_REQUEST['candidates']  # 40 / 140
    assert value(samples, 'lmdeploy:dllm_request_kept_fraction_count') == NUM_REQUESTS
    assert value(samples, 'lmdeploy:dllm_request_kept_fraction_sum') == pytest.approx(NUM_REQUESTS * kept)
    assert value(samples, 'lmdeploy:dllm_request_kept_fraction_bucket', le='0.2') == 0
    assert value(samples, 'lmdeploy:dllm_request_kept_fraction_bucket', le='0.3') == NUM_REQUESTS
    recall = PER_REQUEST['shadow_selected_decoded'] / PER_REQUEST['shadow_decoded']  # 4 / 5
    assert value(samples, 'lmdeploy:dllm_request_shadow_recall_sum') == pytest.approx(NUM_REQUESTS * recall)
    assert value(samples, 'lmdeploy:dllm_request_shadow_recall_bucket', le='0.7') == 0
    assert value(samples, 'lmdeploy:dllm_request_shadow_recall_bucket', le='0.8') == NUM_REQUESTS

    # upstream's own series are still there, from the same exporter
    assert value(samples, 'lmdeploy:request_success_total', finished_reason='ResponseType.FINISH') == NUM_REQUESTS
    assert '# TYPE lmdeploy:dllm_generated_tokens_total counter' in text
    assert '# TYPE lmdeploy:dllm_request_kept_fraction histogram' in text


class _Stats:
    pass


def test_update_from_output_feeds_growth_per_output_and_latest_totals():
    def upstream(self, outputs, req_stats):
        self.upstream_called = True

    update = wrap_update_from_output(upstream)
    req_stats = _Stats()

    def output(**totals):
        return SimpleNamespace(req_metrics=SimpleNamespace(dllm=totals))

    first, second = _Stats(), _Stats()
    update(first, output(decode_steps=4.0, generated_tokens=3.0), req_stats)
    # a later output may stand for several engine steps (the client had not read the earlier ones)
    update(second, output(decode_steps=10.0, generated_tokens=9.0, kept_fraction=None), req_stats)
    assert first.upstream_called and first.dllm_delta['decode_steps'] == 4.0
    assert second.dllm_delta['decode_steps'] == 6.0 and second.dllm_delta['generated_tokens'] == 6.0
    assert req_stats.dllm['decode_steps'] == 10.0

    untracked, aborted = _Stats(), _Stats()
    update(untracked, SimpleNamespace(req_metrics=SimpleNamespace(token_timestamp=0.0)), req_stats)
    update(aborted, SimpleNamespace(req_metrics=None), req_stats)  # upstream: "/abort_request"
    assert not hasattr(untracked, 'dllm_delta') and not hasattr(aborted, 'dllm_delta')
    assert req_stats.dllm['decode_steps'] == 10.0


def fake_async_engine(**config):
    from lmdeploy.messages import PytorchEngineConfig
    return SimpleNamespace(backend='pytorch', model_name='m', stat_loggers=[],
                           backend_config=PytorchEngineConfig(**{'enable_metrics': True, **config}))


def registered_dllm_names():
    import prometheus_client
    return {name for names in prometheus_client.REGISTRY._collector_to_names.values() for name in names
            if name.startswith('lmdeploy:dllm_')}


@pytest.mark.parametrize('config, has_focus, has_shadow, has_auto', [
    (dict(dllm_track=True), False, False, False),
    (dict(dllm_track=True, dllm_enable_delayed_cache=True), False, False, False),
    (dict(dllm_track=True, dllm_enable_focus=True), True, False, False),
    (dict(dllm_track=True, dllm_focus_shadow=True), True, True, False),
    (dict(dllm_track=True, dllm_enable_focus=True, dllm_focus_alpha='auto'), True, True, True),
])
def test_series_follow_the_engine_options(config, has_focus, has_shadow, has_auto):
    engine = fake_async_engine(**config)
    stat_logger = add_dllm_stat_logger(engine)
    assert engine.stat_loggers == [stat_logger]
    names = registered_dllm_names()
    assert set(CORE) <= names
    assert ('lmdeploy:dllm_focus_kept_candidates_total' in names) == has_focus
    assert ('lmdeploy:dllm_request_kept_fraction_count' in names) == has_focus
    assert ('lmdeploy:dllm_shadow_decoded_tokens_total' in names) == has_shadow
    assert ('lmdeploy:dllm_request_shadow_recall_count' in names) == has_shadow
    assert ('lmdeploy:dllm_focus_auto_fallback_steps_total' in names) == has_auto
    assert ('lmdeploy:dllm_focus_auto_shadow_steps_total' in names) == has_auto
    # delayed cache / FOCUS count the small batches' stock steps (stock decoding has nothing else)
    sparse = any(config.get(k) for k in ('dllm_enable_delayed_cache', 'dllm_enable_focus', 'dllm_focus_shadow'))
    assert ('lmdeploy:dllm_stock_steps_total' in names) == sparse
    # a later engine in the same process replaces them instead of clashing in the registry
    add_dllm_stat_logger(fake_async_engine(**config))


def test_no_series_without_tracking_or_metrics(focus_logs):
    for engine in (fake_async_engine(dllm_enable_focus=True), fake_async_engine(),
                   fake_async_engine(dllm_track=True, enable_metrics=False)):
        assert add_dllm_stat_logger(engine) is None and engine.stat_loggers == []
    assert any('no lmdeploy:dllm_* series' in m for m in focus_logs.messages())


def test_auto_counters_grow_with_the_outputs():
    from lmdeploy_focus.serving.metrics import wrap_update_from_output
    stat_logger = DLLMStatLogger('m', focus=True, auto=True)
    update = wrap_update_from_output(lambda self, outputs, req_stats: None)
    req_stats = _Stats()
    for totals in (dict(auto_shadow_steps=2.0, auto_fallback_steps=0.0), dict(auto_shadow_steps=3.0,
                                                                           auto_fallback_steps=5.0)):
        stats = _Stats()
        update(stats, SimpleNamespace(req_metrics=SimpleNamespace(dllm=totals)), req_stats)
        stat_logger.record_iteration(stats)
    assert stat_logger.counters['auto_shadow_steps']._value.get() == 3.0
    assert stat_logger.counters['auto_fallback_steps']._value.get() == 5.0


def test_stat_logger_ignores_untracked_stats():
    stat_logger = DLLMStatLogger('m', focus=True, shadow=True)
    stat_logger.record_iteration(_Stats())  # an AR request / an output without DLLM statistics
    stat_logger.record_finish(_Stats())
    stats = _Stats()
    stats.dllm = dict(candidates=0.0, kept_candidates=0.0, shadow_decoded=0.0)  # nothing to divide
    stat_logger.record_finish(stats)
    assert stat_logger.kept_fraction._sum.get() == 0 and stat_logger.shadow_recall._sum.get() == 0


def test_options_from_a_plain_or_carried_config():
    from lmdeploy_focus.config.engine_config import _UpstreamPytorchEngineConfig as Upstream
    carried = Upstream(hf_overrides={'dllm_focus': {'focus_shadow': True, 'track': True}})
    options = focus_options_of(carried)
    assert options.track and options.enable_focus and options.focus_shadow
    assert focus_options_of(Upstream()) == focus_options_of(SimpleNamespace()) == focus_options_of(None)


# ---- the api_server CLI: delayed cache / FOCUS with metrics on implies --dllm-track ----------------------


@pytest.mark.parametrize('flags, track', [
    (['--focus'], True),
    (['--dllm-focus-shadow'], True),
    (['--dllm-enable-delayed-cache'], True),
    (['--focus', '--disable-metrics'], False),
    ([], False),
])
def test_api_server_focus_with_metrics_implies_tracking(sdar_dir, flags, track):
    from test_cli import serve_probe
    out, probe = serve_probe(sdar_dir('SDAR-tiny-b32'), *flags)
    assert probe is not None, out.stderr[-3000:]
    assert probe['track'] is track
    if flags:
        assert probe['hf_overrides']['dllm_focus']['track'] is track
