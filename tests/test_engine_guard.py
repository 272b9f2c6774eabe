"""Issue 15, item 1 (last line of defence) and item 2 (a dead engine is reported).

Upstream's ``Engine._on_add_message`` over a real upstream ``Scheduler`` and ``RequestManager`` on the
CPU (the engine object carries only what adding a message reads): an empty prompt, which upstream
asserts against inside the engine's request loop, fails alone, next to requests that are queued; a
failure after the sequence was queued leaves it stopped. Then the api_server side: once the engine is
dead, ``/health`` says so with the cause and inference routes answer 503 at once."""
import asyncio
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')


def make_engine():
    from lmdeploy.pytorch.config import CacheConfig, SchedulerConfig
    from lmdeploy.pytorch.disagg.config import EngineRole
    from types import SimpleNamespace

    from lmdeploy.pytorch.messages import SequenceMeta
    from lmdeploy.pytorch.paging.scheduler import Scheduler
    from lmdeploy.pytorch.strategies.ar.sequence import ARSequenceStrategy
    engine_module = importlib.import_module('lmdeploy.pytorch.engine.engine')
    engine = object.__new__(engine_module.Engine)
    engine.scheduler = Scheduler(SchedulerConfig(max_batches=4, max_session_len=256),
                                 CacheConfig(max_batches=4, block_size=16, num_cpu_blocks=0, num_gpu_blocks=64,
                                             device_type='cpu'),
                                 seq_meta=SequenceMeta(block_size=16, strategy=ARSequenceStrategy()))
    engine.req_manager = engine._bind_request_manager()
    engine.engine_config = SimpleNamespace(role=EngineRole.Hybrid, language_model_only=False)
    engine.input_processor = None
    engine.max_session_len = 256
    engine.migration_event = None
    return engine


def add_requests(engine, prompts, sampling_params=None):
    from lmdeploy.pytorch.engine.request import RequestType
    from lmdeploy.pytorch.messages import SamplingParam

    async def main():
        sender = engine.req_manager.build_sender()
        engine.req_manager.requests = asyncio.Queue()
        engine.req_manager._loop_task = asyncio.get_running_loop().create_future()  # "alive"
        for session_id in range(len(prompts)):
            engine.scheduler.add_session(session_id)
        data = [dict(token_ids=prompt, session_id=i, adapter_name=None,
                     sampling_param=(sampling_params or {}).get(i, SamplingParam(max_new_tokens=8)))
                for i, prompt in enumerate(prompts)]
        resps = sender.batched_send_async([RequestType.ADD_MESSAGE] * len(prompts), data)
        await engine.req_manager.step()  # what the engine's request loop runs; raising here ends the loop
        return resps

    return asyncio.run(main())


def test_an_empty_prompt_fails_alone(focus_logs):
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    engine = make_engine()
    resps = add_requests(engine, [[5, 6, 7], [], [8, 9]])
    assert resps[1].type == ResponseType.INTERNAL_ENGINE_ERROR and resps[1].event.is_set()
    assert 'Empty input is not allowed' in resps[1].err_msg
    (message, ) = focus_logs.messages()
    assert 'session 1 (0 input tokens)' in message and 'Empty input' in message and 'fails alone' in message
    for session_id, resp in ((0, resps[0]), (2, resps[2])):
        seqs = list(engine.scheduler.get_session(session_id).sequences.values())
        assert len(seqs) == 1 and seqs[0].status == MessageStatus.WAITING and seqs[0].resp is resp
        assert not resp.event.is_set()  # queued, answered by the model later
    assert not engine.scheduler.get_session(1).sequences
    assert [s.session_id for s in engine.scheduler.waiting] == [0, 2]


def test_a_failure_after_queueing_stops_the_sequence():
    """The request's sequence is created, then reading its sampling parameters fails: the sequence must
    not stay schedulable (it would run with no response to send to)."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus, SamplingParam

    class Broken(SamplingParam):
        reads = 0

        @property
        def max_new_tokens(self):
            Broken.reads += 1
            if Broken.reads > 1:  # the engine guard's own check reads it first, before the sequence is made
                raise RuntimeError('broken sampling parameters')
            return 8

        @max_new_tokens.setter
        def max_new_tokens(self, value):
            pass

    engine = make_engine()
    resps = add_requests(engine, [[5, 6], [7, 8]], sampling_params={0: Broken()})
    assert resps[0].type == ResponseType.INTERNAL_ENGINE_ERROR and 'broken sampling' in resps[0].err_msg
    (seq, ) = engine.scheduler.get_session(0).sequences.values()
    assert seq.status == MessageStatus.STOPPED
    assert [s.session_id for s in engine.scheduler.waiting] == [1]


def test_output_logits_on_a_diffusion_engine_fails_alone(focus_logs):
    """The raw Engine API skips AsyncEngine's validation; a diffusion model's decode steps have logits of
    the masked rows only, so a request for output logits is refused alone, not served broken."""
    from types import SimpleNamespace

    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import SamplingParam
    for field, says in (('out_logits', 'output_logits'), ('out_ce_loss', 'return_ppl')):  # pipeline.get_ppl
        for paradigm, refused in (('dllm', True), ('ar', False)):
            engine = make_engine()
            engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm=paradigm))
            resps = add_requests(engine, [[5, 6], [7, 8]],
                                 sampling_params={0: SamplingParam(max_new_tokens=8, **{field: True})})
            assert resps[0].event.is_set() == refused, paradigm  # an answered request; a queued one waits
            if refused:
                assert resps[0].type == ResponseType.INTERNAL_ENGINE_ERROR
                assert f'{says} ' in resps[0].err_msg and 'not available for diffusion models' in resps[0].err_msg
            assert [s.session_id for s in engine.scheduler.waiting] == ([1] if refused else [0, 1])


@pytest.mark.parametrize('field', ['preserve_cache', 'migration_request'])
def test_kv_migration_fields_are_refused_on_a_hybrid_engine_only(focus_logs, field):
    """On a Hybrid engine ``preserve_cache`` kept the session and its KV cache after the request ended, for good
    (``Engine._on_end_session`` only finishes the sequence), and ``migration_request`` waited for a migration
    loop that only disaggregated engines start. A prefill/decode engine takes them as upstream does."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.disagg.config import EngineRole
    from lmdeploy.pytorch.engine.request import RequestType
    from lmdeploy.pytorch.messages import SamplingParam
    for role, refused in ((EngineRole.Hybrid, True), (EngineRole.Prefill, False)):
        engine = make_engine()
        engine.engine_config.role = role

        async def main():
            sender = engine.req_manager.build_sender()
            engine.req_manager.requests = asyncio.Queue()
            engine.req_manager._loop_task = asyncio.get_running_loop().create_future()  # "alive"
            engine.scheduler.add_session(0)
            resp = sender.send_async(RequestType.ADD_MESSAGE, {
                'token_ids': [5, 6], 'session_id': 0, 'adapter_name': None,
                'sampling_param': SamplingParam(max_new_tokens=4), field: True})
            if field == 'migration_request' and not refused:
                return resp  # a Prefill engine would go on to migrate: not this harness's business
            await engine.req_manager.step()
            return resp

        resp = asyncio.run(main())
        if refused:
            assert resp.event.is_set() and resp.type == ResponseType.INTERNAL_ENGINE_ERROR, role
            assert f'{field}: only for a prefill/decode-disaggregated server' in resp.err_msg
            assert not engine.scheduler.get_session(0).sequences  # nothing was queued
        elif field == 'preserve_cache':
            (seq, ) = engine.scheduler.get_session(0).sequences.values()
            assert seq.preserve_cache and not resp.event.is_set()  # queued as upstream does


def _send(engine, session_id, prompt, sampling_param):
    from lmdeploy.pytorch.engine.request import RequestType

    async def main():
        sender = engine.req_manager.build_sender()
        engine.req_manager.requests = asyncio.Queue()
        engine.req_manager._loop_task = asyncio.get_running_loop().create_future()  # "alive"
        (resp, ) = sender.batched_send_async([RequestType.ADD_MESSAGE], [dict(
            token_ids=prompt, session_id=session_id, adapter_name=None, sampling_param=sampling_param)])
        await engine.req_manager.step()
        return resp

    return asyncio.run(main())


@pytest.mark.parametrize('paradigm', ['ar', 'dllm'])
@pytest.mark.parametrize('running', [False, True])
def test_a_second_request_on_a_busy_session_is_refused_and_leaves_the_first_untouched(focus_logs, paradigm, running):
    """Upstream's handler rewrote the in-progress sequence's tokens and sampling parameters before raising
    (RUNNING) or took it over silently (WAITING: the first request was never answered)."""
    from types import SimpleNamespace

    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus, SamplingParam
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm=paradigm))
    engine.scheduler.add_session(0)
    first = _send(engine, 0, [5, 6, 7], SamplingParam(max_new_tokens=8, top_k=1))
    (seq, ) = engine.scheduler.get_session(0).sequences.values()
    if running:
        engine.scheduler.schedule(is_prefill=True, prealloc_size=0)
        engine.scheduler.activate_seqs([seq])
        assert seq.status == MessageStatus.RUNNING
    status, tokens = seq.status, seq.num_token_ids
    second = _send(engine, 0, [40, 41, 42, 43], SamplingParam(max_new_tokens=3, top_k=50))
    assert second.event.is_set() and second.type == ResponseType.INTERNAL_ENGINE_ERROR
    assert 'already has a request in progress' in second.err_msg
    assert (seq.status, seq.num_token_ids, seq.sampling_param.max_new_tokens, seq.sampling_param.top_k) == \
        (status, tokens, 8, 1)
    assert seq.resp is first and not first.event.is_set()  # still the first request's, still to be answered
    # once it has finished (or was stopped while waiting), the session takes its next turn
    seq.state.finish() if running else seq.state.stop()
    third = _send(engine, 0, [9, 10], SamplingParam(max_new_tokens=4))
    assert not third.event.is_set() and seq.resp is third


@pytest.mark.parametrize('running', [False, True])
def test_the_refused_callers_end_session_leaves_the_first_request_alone(focus_logs, running):
    """EngineInstance.async_stream_infer ends its session in a finally whatever the reply, and upstream's
    END_SESSION handler ends a session with a running sequence without answering it: the refused second caller's
    clean-up freed the first request's sequence and left that request waiting forever. Found by a bug-hunting
    review. The first caller's own END_SESSION, and any other sender's, are upstream's as before."""
    from types import SimpleNamespace

    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.engine.request import RequestType
    from lmdeploy.pytorch.messages import SamplingParam
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm='dllm'))
    engine.scheduler.add_session(0)

    async def main():
        engine.req_manager.requests = asyncio.Queue()
        engine.req_manager._loop_task = asyncio.get_running_loop().create_future()  # "alive"
        a, b = engine.req_manager.build_sender(), engine.req_manager.build_sender()

        async def send(sender, rtype, data):
            resp = sender.send_async(rtype, data)
            await engine.req_manager.step()
            return resp

        first = await send(a, RequestType.ADD_MESSAGE, dict(token_ids=[5, 6], session_id=0, adapter_name=None,
                                                          sampling_param=SamplingParam(max_new_tokens=8)))
        (seq, ) = engine.scheduler.get_session(0).sequences.values()
        if running:
            engine.scheduler.schedule(is_prefill=True, prealloc_size=0)
            engine.scheduler.activate_seqs([seq])
        status = seq.status
        for _ in range(2):  # the same sender refused twice (two instances of one sender, or a retry)
            second = await send(b, RequestType.ADD_MESSAGE, dict(token_ids=[7, 8], session_id=0, adapter_name=None,
                                                               sampling_param=SamplingParam(max_new_tokens=8)))
            assert second.event.is_set() and 'already has a request in progress' in second.err_msg
        for _ in range(2):
            await send(b, RequestType.END_SESSION, dict(session_id=0, response=False))  # each refused call's finally
            assert engine.scheduler.get_session(0) is not None and seq.status == status and seq.resp is first
        assert not first.event.is_set()  # still to be answered by the step
        await send(b, RequestType.END_SESSION, dict(session_id=0, response=False))  # a second one is upstream's
        assert engine.scheduler.get_session(0) is None
        # ... whose end of the session answers the request in progress there (upstream left it waiting forever)
        assert first.event.is_set() and first.type == ResponseType.CANCEL

    asyncio.run(main())


@pytest.mark.parametrize('running', [False, True])
@pytest.mark.parametrize('how', ['END_SESSION', 'Engine.end_session'])
def test_ending_a_session_under_its_request_answers_that_request(running, how):
    """Upstream frees the session's sequences and never answers its request in progress: an END_SESSION sent while
    it runs (raw Engine API; or a stream's late clean-up after the caller's next turn was queued), or
    ``Engine.end_session`` itself (``/distserve/free_cache`` on a disaggregated server). Answered CANCEL, as a
    stop_session would; a neighbour session is untouched. Found by a bug-hunting review."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.engine.request import RequestType
    engine = make_engine()
    resps = add_requests(engine, [[5, 6], [7, 8]])
    seqs = [next(iter(engine.scheduler.get_session(i).sequences.values())) for i in range(2)]
    if running:
        engine.scheduler.schedule(is_prefill=True, prealloc_size=0)
        engine.scheduler.activate_seqs(seqs)
    for r in resps:
        r.event.clear()

    if how == 'Engine.end_session':
        assert engine.end_session(0)
    else:
        async def main():
            engine.req_manager.requests = asyncio.Queue()
            engine.req_manager._loop_task = asyncio.get_running_loop().create_future()  # "alive"
            ended = engine.req_manager.build_sender().send_async(RequestType.END_SESSION, dict(session_id=0))
            await engine.req_manager.step()
            return ended
        ended = asyncio.run(main())
        assert ended.type == ResponseType.SUCCESS
    assert engine.scheduler.get_session(0) is None
    assert resps[0].event.is_set() and resps[0].type == ResponseType.CANCEL and resps[0].is_done
    assert not resps[1].event.is_set()  # the neighbour waits for its step
    assert engine.scheduler.get_session(1) is not None


def test_a_diffusion_request_without_a_token_budget_is_refused(focus_logs):
    """Upstream's decode inputs leave out a sequence with max_new_tokens <= 0 while the DLLM prefill added its
    row: later sequences of the batch would decode another's row. Refused, also when the session's earlier
    turns leave no room (upstream would clamp the budget to <= 0)."""
    from types import SimpleNamespace

    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import SamplingParam
    for paradigm, refused in (('dllm', True), ('ar', False)):
        engine = make_engine()
        engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm=paradigm))
        resps = add_requests(engine, [[5, 6], [7, 8], list(range(1, 257)), [3, 4]],
                             sampling_params={0: SamplingParam(max_new_tokens=0), 1: SamplingParam(max_new_tokens=-2),
                                              2: SamplingParam(max_new_tokens=8)})
        for i in (0, 1, 2):
            assert resps[i].event.is_set() == refused, (paradigm, i)
        if refused:
            assert 'max_new_tokens must be >= 1' in resps[0].err_msg and 'no room left' in resps[2].err_msg
        assert not resps[3].event.is_set()  # the good neighbour is queued
        assert [s.session_id for s in engine.scheduler.waiting] == ([3] if refused else [0, 1, 2, 3])


def test_upstream_without_the_guard_raises_in_the_loop():
    """The defect the guard is for: upstream's handler raises out of the request loop's step."""
    engine = make_engine()
    upstream = type(engine)._on_add_message.__lmdeploy_focus_upstream__
    engine.req_manager.bind_func(importlib.import_module('lmdeploy.pytorch.engine.request').RequestType.ADD_MESSAGE,
                                 lambda reqs, **kw: upstream(engine, reqs, **kw))
    with pytest.raises(AssertionError, match='Empty input'):
        add_requests(engine, [[5], []])


def test_a_dead_loop_names_its_cause_in_the_health_status():
    engine = make_engine()
    engine._loop_main = None
    engine._engine_loop = None

    async def main():
        async def dies():
            raise AssertionError('Empty input is not allowed.')
        engine.req_manager._loop_task = asyncio.get_running_loop().create_task(_run_wrapped(engine, dies))
        with pytest.raises(AssertionError):
            await engine.req_manager._loop_task
        return engine.get_local_health_status()

    assert hasattr(type(engine).async_loop, '__lmdeploy_focus_upstream__')
    status = asyncio.run(main())
    assert status['alive'] is False
    assert 'Cause: AssertionError: Empty input is not allowed.' in status['message']


async def _run_wrapped(engine, body):
    """Run the patched ``Engine.async_loop`` with upstream's body replaced by ``body``."""
    from lmdeploy_focus.serving.engine_guard import record_loop_failure
    return await record_loop_failure(lambda self: body())(engine)


# ---- the api_server once the engine is dead -----------------------------------------------------------


def test_dead_engine_health_503_and_immediate_503(monkeypatch):
    from fastapi.testclient import TestClient

    from lmdeploy_focus.serving.liveness import LIVENESS
    from lmdeploy_focus_dev.testing.fake_serving import build_app
    app = build_app(MODEL, monkeypatch)
    body = {'model': 'm', 'prompt': 'hello', 'max_tokens': 2}
    with TestClient(app) as client:
        assert client.get('/health').status_code == 200
        assert client.post('/v1/completions', json=body).status_code == 200
        engine = LIVENESS.async_engine.engine
        engine.kill('AssertionError: Empty input is not allowed.')
        # the first request after the death meets the dead engine (upstream: 503 via ENGINE_STOP_ERROR)
        # and makes the watcher check at once
        first = client.post('/v1/completions', json=body)
        assert first.status_code == 503
        for _ in range(50):
            if LIVENESS.dead:
                break
            client.get('/v1/models')
            import time
            time.sleep(0.05)
        assert LIVENESS.dead
        seen = len(engine.seen)
        for path, payload in (('/v1/completions', body), ('/generate', {'input_ids': [5, 6], 'max_tokens': 2}),
                              ('/v1/chat/completions', {'model': 'm', 'messages': [{'role': 'user', 'content': 'x'}]})):
            r = client.post(path, json=payload)
            assert r.status_code == 503, (path, r.text)
            assert 'Empty input is not allowed' in r.text
        assert len(engine.seen) == seen  # answered by the gate, not sent to the engine
        health = client.get('/health')
        assert health.status_code == 503 and 'Empty input is not allowed' in health.json()['message']
    assert LIVENESS._task is None


@pytest.mark.parametrize('paradigm', ['ar', 'dllm'])
def test_a_token_id_outside_the_vocabulary_is_refused_alone(focus_logs, paradigm):
    """An id >= vocab_size (or < 0) reaches the embedding's gather, whose device-side assert ends the CUDA
    context: every request of the process dies (the tiny model under the random benchmark prompts, 2026-12-06).
    Refused on its own, naming the first bad position; the neighbours, with ids up to vocab_size - 1, queue."""
    import random
    from types import SimpleNamespace

    import numpy as np
    vocab = random.randint(50, 500)
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm=paradigm, vocab_size=vocab))
    bad_at = random.randint(1, 6)
    too_high = [1] * bad_at + [vocab + random.randint(0, 5)] + [2, vocab + 9]
    negative = np.array([3, -1, 4])
    resps = add_requests(engine, [[vocab - 1, 0], too_high, negative, np.array([5, vocab - 1], dtype=np.int64),
                                  [1.5, 2.0]])
    assert [r.event.is_set() for r in resps] == [False, True, True, False, True]
    assert f'token_ids[{bad_at}] = {too_high[bad_at]}' in resps[1].err_msg
    assert f'[0, {vocab})' in resps[1].err_msg and '(2 such ids)' in resps[1].err_msg
    assert 'token_ids[1] = -1' in resps[2].err_msg and 'must be integers' in resps[4].err_msg
    assert [s.session_id for s in engine.scheduler.waiting] == [0, 3]


def test_malformed_token_ids_fail_alone_and_tensors_are_checked_like_lists(focus_logs):
    """The vocabulary check itself must not end the loop on a request it cannot read (a ragged list, a 2-d array,
    a 0-d tensor): refused alone. Tensors through the raw Engine API are checked as their values; a multimodal
    request (placeholder ids are the input processor's) and a model config without vocab_size are not checked."""
    import random
    from types import SimpleNamespace

    import numpy as np
    import torch
    vocab = random.randint(50, 500)
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm='ar', vocab_size=vocab))
    resps = add_requests(engine, [[[1, 2], [3]], np.ones((2, 2), dtype=np.int64), torch.tensor(5),
                                  torch.tensor([1, vocab], requires_grad=False), torch.tensor([1, vocab - 1]), [4, 5]])
    assert [r.event.is_set() for r in resps] == [True, True, True, True, False, False]
    assert all('flat sequence of integers' in r.err_msg for r in resps[:3])
    assert f'token_ids[1] = {vocab}' in resps[3].err_msg
    assert [s.session_id for s in engine.scheduler.waiting] == [4, 5]
    # no vocabulary known: nothing refused for its ids
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm='ar', vocab_size=None))
    assert not add_requests(engine, [[vocab + 7]])[0].event.is_set()


def test_a_multimodal_request_is_left_to_the_input_processor():
    from lmdeploy_focus.serving.engine_guard import check_engine_request
    from types import SimpleNamespace
    engine = SimpleNamespace(scheduler=None, model_config=SimpleNamespace(model_paradigm='ar', vocab_size=10),
                             max_session_len=None, input_processor=object())
    image = SimpleNamespace(data=dict(token_ids=[3, 10**6], session_id=0, input_multimodals=[{'image': 'x'}]))
    check_engine_request(engine, image)  # the placeholder id is not refused
    text = SimpleNamespace(data=dict(token_ids=[3, 10**6], session_id=0, input_multimodals=None))
    with pytest.raises(ValueError, match=r'token_ids\[1\] = 1000000'):
        check_engine_request(engine, text)
    # a text-only model (SDAR, LLaDA2: no input processor): upstream dropped the data with a log line and queued the
    # ids unchecked, an id past the vocabulary then failed the embedding (found by a bug hunt)
    engine.input_processor = None
    with pytest.raises(ValueError, match='multimodal inputs are not supported by this model'):
        check_engine_request(engine, image)


def test_a_check_that_raises_unexpectedly_fails_that_request_only(monkeypatch, focus_logs):
    """The guard's own checks run before upstream's handler: an exception they did not foresee is answered on the
    request (INTERNAL_ENGINE_ERROR) instead of ending the loop for every request in flight."""
    from types import SimpleNamespace

    from lmdeploy_focus.serving import engine_guard
    real = engine_guard._check_vocabulary

    def flaky(token_ids, vocab_size):
        if list(token_ids) == [6, 6]:
            raise RuntimeError('unforeseen')
        return real(token_ids, vocab_size)

    monkeypatch.setattr(engine_guard, '_check_vocabulary', flaky)
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm='ar', vocab_size=100))
    resps = add_requests(engine, [[1, 2], [6, 6], [3, 4]])
    assert [r.event.is_set() for r in resps] == [False, True, False]
    assert 'RuntimeError: unforeseen' in resps[1].err_msg
    assert [s.session_id for s in engine.scheduler.waiting] == [0, 2]


@pytest.mark.parametrize('paradigm', ['ar', 'dllm'])
def test_sampling_parameters_the_sampler_cannot_take_are_refused_alone(focus_logs, paradigm):
    """The raw Engine API skips the request boundary's checks; these reach the batch's sampler inside the step,
    where they raised (CPU: top_k > vocab, bad / stop ids outside it or negative) and so ended the engine loop for
    every request (on a GPU an out-of-range gather is a device-side assert: the process). Found by a bug-hunting
    review. What upstream's from_gen_config produces for a normal request (a 64-bit seed, top_k 0) still queues."""
    import random
    from types import SimpleNamespace

    import numpy as np
    from lmdeploy.pytorch.messages import SamplingParam
    vocab = random.randint(100, 1000)
    mask = vocab - 3
    engine = make_engine()
    engine.executor = SimpleNamespace(model_config=SimpleNamespace(model_paradigm=paradigm, vocab_size=vocab,
                                                                   dllm_mask_token=mask))
    cases = [  # (sampling parameters, what the refusal names; None: accepted)
        (dict(), None),
        (dict(top_k=0, random_seed=random.getrandbits(64) | 1 << 63, temperature=3.0, stop_words=[vocab - 1]), None),
        (dict(top_k=vocab + random.randint(1, 50)), 'top_k: must be an integer in [0, '),
        (dict(bad_words=[vocab + random.randint(0, 9)]), 'bad_words: token id'),
        (dict(bad_words=[-3]), 'bad_words: token id -3 is outside the vocabulary'),
        (dict(stop_words=[vocab + 5], min_new_tokens=4), 'stop_words: token id'),
        (dict(stop_words=list(range(2, 60)) * 5, bad_words=list(range(2, 60)) * 5), None),  # lists upstream grew
        # one request's list pads every row of the batch's table (150,000 ids: 2.6 GiB at 2,048 block rows)
        (dict(bad_words=list(range(2, 60)) * 20), 'bad_words: at most 1024 token ids'),
        (dict(num_logprobs=vocab + 1), 'logprobs: must be an integer in [0, 20]'),
        (dict(temperature=float('nan')), 'temperature: must be a finite number'),
        (dict(repetition_ngram_size=10 ** 6, repetition_ngram_threshold=2), 'repetition_ngram_size'),
        (dict(stop_words=[mask]), 'the diffusion mask token' if paradigm == 'dllm' else None),
        # a float budget made the batch's stopping counters float: a neighbour's output sliced with a float
        (dict(max_new_tokens=40.0), 'max_new_tokens: must be an integer'),
        (dict(min_new_tokens=2.0), 'min_new_tokens: must be an integer'),
        (dict(max_new_tokens=np.int64(8), min_new_tokens=np.int32(2)), None),
    ]
    resps = add_requests(engine, [[5, 6]] * len(cases),
                         sampling_params={i: SamplingParam(**{'max_new_tokens': 8, **fields})
                                          for i, (fields, _) in enumerate(cases)})
    for resp, (fields, refusal) in zip(resps, cases):
        assert resp.event.is_set() == (refusal is not None), fields
        if refusal is not None:
            assert refusal in resp.err_msg, (fields, resp.err_msg)
    assert [s.session_id for s in engine.scheduler.waiting] == [i for i, (_, r) in enumerate(cases) if r is None]
