"""Per-request DLLM statistics: per-sequence step counts, their accumulation per request, and the
request metrics the engine loop's outputs get."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmdeploy.messages import RequestMetrics
from lmdeploy.pytorch.messages import MessageStatus
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraOutputs
from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy
from lmdeploy_focus.strategies.dllm import request_stats
from lmdeploy_focus.strategies.dllm.request_stats import (DLLMRequestMetrics, StepStatsOutputs,
                                                         TrackedDLLMExtraOutputs, TrackingDLLMSequenceStrategy,
                                                         attach_request_stats)
from lmdeploy_focus.strategies.dllm.run_stats import KEYS, RunStats, per_sequence_counts


def test_per_sequence_counts_columns_and_run_totals():
    rows = per_sequence_counts(3, decode_steps=1, generated_tokens=torch.tensor([2, 0, 5]),
                               deep_tokens=torch.tensor([4, 1, 9]), processed_tokens=32)
    assert rows.shape == (3, len(KEYS)) and rows.dtype == torch.float32
    col = {k: rows[:, i].tolist() for i, k in enumerate(KEYS)}
    assert col['generated_tokens'] == [2, 0, 5] and col['deep_tokens'] == [4, 1, 9]
    assert col['processed_tokens'] == [32] * 3 and col['candidates'] == [0] * 3
    stats = RunStats()
    stats.add_rows(rows)
    stats.add_rows(rows)
    totals = stats.read(reset=True)
    assert totals['generated_tokens'] == 14 and totals['decode_steps'] == 6 and totals['deep_tokens'] == 28
    with pytest.raises(KeyError, match='unknown'):
        per_sequence_counts(1, tokens=1)


def test_per_sequence_counts_match_column_by_column_assignment_on_random_columns():
    """The one-stack build equals writing each column into zeros (float32 casts of int32 / int64 / bool /
    float64 columns, 0-d tensors and numbers broadcast), on random columns and batch sizes."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    makers = [lambda b: torch.randint(0, 40, (b, ), generator=gen, dtype=torch.int32),
              lambda b: torch.randint(0, 2**20, (b, ), generator=gen),
              lambda b: torch.rand(b, generator=gen) < 0.5,
              lambda b: torch.rand(b, generator=gen, dtype=torch.float64) * 7,
              lambda b: torch.randint(0, 9, (), generator=gen),
              lambda b: int(torch.randint(0, 9, (), generator=gen)),
              lambda b: 0.25]
    for _ in range(50):
        batch = int(torch.randint(1, 9, (), generator=gen))
        keys = [k for k in KEYS if torch.rand((), generator=gen) < 0.6]
        columns = {k: makers[int(torch.randint(0, len(makers), (), generator=gen))](batch) for k in keys}
        want = torch.zeros(batch, len(KEYS))
        for key, value in columns.items():
            want[:, KEYS.index(key)] = value.to(torch.float32) if isinstance(value, torch.Tensor) else float(value)
        got = per_sequence_counts(batch, **columns)
        assert got.dtype == torch.float32 and torch.equal(got, want), columns


class _Agent:
    def make_extra_outputs(self, extra_inputs):
        return DLLMExtraOutputs(dllm_mask=extra_inputs)


class _TrackedAgent(StepStatsOutputs, _Agent):
    pass


def test_step_stats_leave_with_the_next_extra_outputs_only():
    agent = _TrackedAgent()
    mask = torch.zeros(4)
    assert type(agent.make_extra_outputs(mask)) is DLLMExtraOutputs  # nothing tracked this step
    rows = per_sequence_counts(2, decode_steps=1)
    agent.keep_step_stats(rows)
    out = agent.make_extra_outputs(mask)
    assert isinstance(out, TrackedDLLMExtraOutputs) and out.dllm_stats is rows and out.dllm_mask is mask
    assert out.to_cpu().dllm_stats.shape == (2, len(KEYS))  # upstream's host copy keeps the field
    assert type(agent.make_extra_outputs(mask)) is DLLMExtraOutputs  # consumed


def _seq(session_id, status=MessageStatus.RUNNING):
    return SimpleNamespace(session_id=session_id, status=status)


def test_sequence_strategy_adds_rows_to_the_sequences_that_ran(monkeypatch):
    def upstream_update(self, running, batched_outputs, model_inputs, delta, **kwargs):
        running[1].status = MessageStatus.STOPPED  # finished in this step: its row still counts

    monkeypatch.setattr(DLLMSequenceStrategy, 'update_running', upstream_update)
    strategy = TrackingDLLMSequenceStrategy(block_size=64, dllm_mask_token=7)
    running = [_seq(1), _seq(2), _seq(3, MessageStatus.STOPPED)]
    k = {key: i for i, key in enumerate(KEYS)}
    for step in range(2):
        rows = per_sequence_counts(3, decode_steps=1, generated_tokens=torch.tensor([1, 3, 9]),
                                   deep_tokens=torch.tensor([4, 6, 9]))
        out = SimpleNamespace(extra_outputs=TrackedDLLMExtraOutputs(dllm_mask=torch.zeros(3), dllm_stats=rows))
        strategy.update_running(running, out, None, None)
    first = getattr(running[0], request_stats.SEQUENCE_ATTR).totals
    assert first[k['decode_steps']] == 2 and first[k['generated_tokens']] == 2 and first[k['deep_tokens']] == 8
    # the second sequence stopped in step 1, so step 2 (where it no longer ran) is not counted
    second = getattr(running[1], request_stats.SEQUENCE_ATTR).totals
    assert second[k['decode_steps']] == 1 and second[k['generated_tokens']] == 3
    assert not hasattr(running[2], request_stats.SEQUENCE_ATTR)  # never running
    before = getattr(running[0], request_stats.SEQUENCE_ATTR).totals.copy()
    strategy.update_running(running[:2], out, None, None)  # mismatched rows: dropped, engine goes on
    np.testing.assert_equal(getattr(running[0], request_stats.SEQUENCE_ATTR).totals, before)
    untracked = SimpleNamespace(extra_outputs=DLLMExtraOutputs(dllm_mask=torch.zeros(3)))
    strategy.update_running(running, untracked, None, None)  # stock outputs: nothing added
    assert getattr(running[0], request_stats.SEQUENCE_ATTR).totals[k['decode_steps']] == 2


def test_outputs_of_tracked_sequences_get_dllm_request_metrics():
    tracked, plain = _seq(1), _seq(2)
    stats = request_stats.RequestStats()
    stats.add(per_sequence_counts(1, decode_steps=4, generated_tokens=8, deep_tokens=20, processed_tokens=64)[0])
    setattr(tracked, request_stats.SEQUENCE_ATTR, stats)
    metrics = RequestMetrics(token_timestamp=5.0, cached_tokens=3)
    outputs = {1: SimpleNamespace(req_metrics=metrics), 2: SimpleNamespace(req_metrics=metrics)}
    attach_request_stats(outputs, [tracked, plain, _seq(9)], tracked=False)  # an engine that does not count
    assert outputs[1].req_metrics is metrics and outputs[2].req_metrics is metrics
    attach_request_stats(outputs, [tracked, plain, _seq(9)], tracked=True)
    got = outputs[1].req_metrics
    assert isinstance(got, DLLMRequestMetrics) and got.cached_tokens == 3 and got.token_timestamp == 5.0
    assert got.dllm['generated_per_step'] == 2.0 and got.dllm['processed_per_generated'] == 2.5
    assert got.dllm['layer0_processed_per_generated'] == 8.0 and got.dllm['decode_steps'] == 4
    # nothing counted for this request (it ended in its prefill step): zeros, not a missing attribute
    zeros = outputs[2].req_metrics
    assert isinstance(zeros, DLLMRequestMetrics) and zeros.cached_tokens == 3
    assert zeros.dllm['decode_steps'] == 0 and zeros.dllm['generated_tokens'] == 0
    np.testing.assert_equal(stats.totals.shape, (len(KEYS), ))


def test_engine_loop_outputs_pass_through_the_wrapper():
    from lmdeploy.pytorch.engine.engine_loop import EngineLoop
    seq = _seq(4)
    stats = request_stats.RequestStats()
    stats.add(per_sequence_counts(1, decode_steps=1, generated_tokens=2, deep_tokens=3)[0])
    setattr(seq, request_stats.SEQUENCE_ATTR, stats)

    def upstream(self, batched_outputs, running, model_inputs, delta):
        return {r.session_id: SimpleNamespace(req_metrics=RequestMetrics()) for r in running}

    from lmdeploy_focus.patch import request_metrics
    loop = SimpleNamespace(EngineLoop=type('Loop', (), {'_make_infer_outputs': upstream}))
    request_metrics.apply(loop)  # the same wrapper the plugin put on EngineLoop
    tracking = TrackingDLLMSequenceStrategy(block_size=64, dllm_mask_token=7)
    no_logprobs = SimpleNamespace(logprobs=None, extra_outputs=None)
    out = loop.EngineLoop._make_infer_outputs(SimpleNamespace(seq_strategy=tracking), no_logprobs, [seq], None, None)
    assert out[4].req_metrics.dllm['processed_per_generated'] == 1.5
    # an engine that does not count (stock strategy, an autoregressive model): upstream's metrics untouched
    out = loop.EngineLoop._make_infer_outputs(SimpleNamespace(seq_strategy=None), None, [seq], None, None)
    assert type(out[4].req_metrics) is RequestMetrics
    assert EngineLoop._make_infer_outputs.__lmdeploy_focus_upstream__.__name__ == '_make_infer_outputs'


def test_the_wrapper_lets_the_sequence_strategy_prepare_outputs_before_upstream_reads_them():
    seen = []

    def upstream(self, batched_outputs, running, model_inputs, delta):
        seen.append(('upstream', batched_outputs.logprobs))
        return {}

    strategy = SimpleNamespace(prepare_step_outputs=lambda out, running, inputs, delta: (
        seen.append(('prepare', inputs, delta)), setattr(out, 'logprobs', 'rewritten')))
    from lmdeploy_focus.patch import request_metrics
    loop = SimpleNamespace(EngineLoop=type('Loop', (), {'_make_infer_outputs': upstream}))
    request_metrics.apply(loop)
    outputs = SimpleNamespace(logprobs='upstream rows')
    loop.EngineLoop._make_infer_outputs(SimpleNamespace(seq_strategy=strategy), outputs, [], 'inputs', delta='delta')
    assert seen == [('prepare', 'inputs', 'delta'), ('upstream', 'rewritten')]


def test_next_request_of_a_session_starts_its_own_totals(monkeypatch):
    """Upstream reuses a session's sequence for its next request (new ``resp``): the totals restart,
    and until that request's first decode step its outputs carry no earlier request's totals."""
    monkeypatch.setattr(DLLMSequenceStrategy, 'update_running', lambda self, *a, **k: None)
    strategy = TrackingDLLMSequenceStrategy(block_size=64, dllm_mask_token=7)
    seq = SimpleNamespace(session_id=1, status=MessageStatus.RUNNING, resp=object())
    k = {key: i for i, key in enumerate(KEYS)}

    def step(generated):
        rows = per_sequence_counts(1, decode_steps=1, generated_tokens=generated)
        out = SimpleNamespace(extra_outputs=TrackedDLLMExtraOutputs(dllm_mask=torch.zeros(1), dllm_stats=rows))
        strategy.update_running([seq], out, None, None)

    step(5)
    step(3)
    assert getattr(seq, request_stats.SEQUENCE_ATTR).totals[k['generated_tokens']] == 8
    seq.resp = object()  # the session's next request
    outputs = {1: SimpleNamespace(req_metrics=RequestMetrics())}
    attach_request_stats(outputs, [seq], tracked=True)  # e.g. its prefill step: nothing counted for it yet
    assert outputs[1].req_metrics.dllm['generated_tokens'] == 0  # the earlier request's 8 are not its
    step(2)
    attach_request_stats(outputs, [seq], tracked=True)
    assert outputs[1].req_metrics.dllm['generated_tokens'] == 2 and outputs[1].req_metrics.dllm['decode_steps'] == 1
