"""Requests in flight across graph-runner resets (a weight update while serving, which no warm-up follows): each
batch bucket is captured again at its next step, smaller ones possibly first, and every request's committed blocks
equal the same request decoded alone with no reset (random prompts, lengths and joins; CPU, padded path)."""
import logging
import random
import secrets

import pytest

from lmdeploy_focus.models import step_graphs
from lmdeploy_focus_dev.testing import batch_lifecycle
from lmdeploy_focus_dev.testing.batch_lifecycle import Request, decode_alone, decode_batched, lifecycle_model

L = 8
RESET_EVERY = 7  # decode steps between resets


@pytest.mark.parametrize('strategy, commit, alpha, sync_free', [
    ('low_confidence_dynamic', 'exact', 1.5, 0),
    ('low_confidence_static', 'exact', 1.5, 3 * L),  # batches of <= 3 step sync-free (their own small graphs)
    ('low_confidence_static', 'exact', 'auto', 0),  # the α controller's update graph is captured again too
    ('sequential', 'fast', None, 0),  # delayed cache alone
])
@pytest.mark.parametrize('rep', range(2))
def test_requests_in_flight_across_resets_decode_as_alone(strategy, commit, alpha, sync_free, rep, monkeypatch):
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    tiny, unmasking = lifecycle_model(L, strategy, alpha, commit)
    graphs, runtime = tiny.model.step_graphs, tiny.model.delayed_cache_runtime
    graphs.sync_free_rows = sync_free
    vocab = tiny.model_config.dllm_mask_token
    requests = [Request(i, [rng.randrange(vocab) for _ in range(rng.randint(2, 20))], rng.randint(1, 4))
                for i in range(8)]
    decode = batch_lifecycle.LifecycleSim.decode
    seen = dict(steps=0, resets=0, recaptured=[], controller_after=[])

    def decode_with_resets(self, *args, **kwargs):
        seen['steps'] += 1
        if seen['steps'] % RESET_EVERY == 3:
            tiny.model.reset_step_graphs()  # what patch 14 does after upstream's reset
            seen['resets'] += 1
        before = set(graphs.buckets)
        decode(self, *args, **kwargs)
        new = set(graphs.buckets) - before
        seen['recaptured'] += sorted(new)
        if new:
            seen['controller_after'].append(runtime.controller is not None)

    monkeypatch.setattr(batch_lifecycle.LifecycleSim, 'decode', decode_with_resets)
    batched, _ = decode_batched(tiny, unmasking, True, requests, rng, set())
    monkeypatch.setattr(batch_lifecycle.LifecycleSim, 'decode', decode)
    assert seen['resets'] > 0 and seen['recaptured'], (seed, seen)
    if alpha == 'auto':
        assert all(seen['controller_after']), (seed, seen)
    for request in requests:
        alone = decode_alone(tiny, unmasking, True, request)
        assert batched[request.rid] == alone, f'seed {seed}: request {request.rid}'


def _captured_tiny():
    tiny, _ = lifecycle_model(L, 'low_confidence_static', 1.5)
    runner = tiny.new_runner(page_size=16)
    tiny.model.step_graphs.reset()
    runner.capture_step_graphs([4, 2])
    tiny.model.reset_step_graphs()
    return tiny, runner


def test_a_reset_during_a_capture_registers_nothing(monkeypatch, caplog):
    """A reset from another thread (upstream runs weight updates off the engine loop) while a bucket is captured:
    the bucket's graphs point at buffers the reset dropped, so they are not kept; the next step captures again."""
    tiny, runner = _captured_tiny()
    graphs = tiny.model.step_graphs
    replayable = step_graphs._Replayable
    calls = []

    def resetting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            graphs.reset()
        return replayable(*args, **kwargs)

    monkeypatch.setattr(step_graphs, '_Replayable', resetting)
    with caplog.at_level(logging.WARNING, logger='lmdeploy.focus'):
        runner.capture_step_graphs([2])
    assert graphs.buckets == {} and graphs.dropped_bucket(2) == 2
    assert 'captured again at its next step' in caplog.text
    monkeypatch.setattr(step_graphs, '_Replayable', replayable)
    runner.capture_step_graphs([2])
    assert set(graphs.buckets) == {2} and graphs.dropped_bucket(2) is None and graphs.dropped_bucket(4) == 4


def test_a_capture_that_fails_after_a_reset_leaves_the_bucket_eager(monkeypatch, caplog):
    """A capture at a step after a reset that raises (e.g. out of memory after a weight update) does not fail the
    step or the engine: the bucket is forgotten (its batches take the next larger one), the warning says so."""
    tiny, runner = _captured_tiny()
    graphs = tiny.model.step_graphs

    def out_of_memory(*args, **kwargs):
        raise RuntimeError('CUDA out of memory (simulated)')

    monkeypatch.setattr(graphs, 'capture', out_of_memory)
    with caplog.at_level(logging.WARNING, logger='lmdeploy.focus'):
        tiny.model.recapture_decode_step(2, runner.kv_cache.caches, attn_metadata=None)
    assert 'could not be captured again' in caplog.text and 'out of memory' in caplog.text
    assert graphs.capture_sizes == {4} and graphs.dropped_bucket(2) == 4  # a batch of 2 now waits for bucket 4
    assert graphs.buckets == {}
