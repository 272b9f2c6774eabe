"""Issue 15 item 1, last line of defence (patch 16): an exception while the next step is scheduled fails
the one request it belongs to; the engine loop goes on with the others.

Upstream's ``InputsMakerAsync`` over a real upstream ``Scheduler``, the requests added by the real
``Engine._on_add_message`` (see tests/test_engine_guard.py), and upstream's AR strategies on the CPU. A
request is broken after it was added (its sampling parameters can no longer be turned into tensors),
so the batch's builder raises: upstream's method raises out of the main loop, ours answers that request
with ``INTERNAL_ENGINE_ERROR`` and builds the step for the others."""
from types import SimpleNamespace

import pytest

from test_engine_guard import add_requests, make_engine


def make_maker(engine):
    """``build_inputs_maker`` (the patched one: it keeps the request manager) over what it reads of an engine."""
    from lmdeploy.pytorch.engine import inputs_maker
    from lmdeploy.pytorch.strategies.ar import ARStrategyFactory
    factory = ARStrategyFactory(model_config=SimpleNamespace(bos_token_id=0))
    scheduler = engine.scheduler
    fake = SimpleNamespace(
        executor=SimpleNamespace(device_type='cpu'), scheduler=scheduler, req_manager=engine.req_manager,
        adapter_manager=SimpleNamespace(num_adapters=lambda: 1),
        engine_strategy=factory.build_engine_strategy(scheduler.cache_config, scheduler.scheduler_config),
        sampling_strategy=factory.build_sampling_strategy(),
        model_agent_strategy=factory.build_model_agent_strategy(),
        cache_config=scheduler.cache_config, model_config=SimpleNamespace(use_mrope=False),
        engine_config=SimpleNamespace(prefill_interval=None), specdecode_config=None,
        dist_config=SimpleNamespace(dp=1), misc_config=SimpleNamespace(enable_chunked_prefill=False))
    return inputs_maker.build_inputs_maker(fake)


def break_sampling(seq):
    seq.sampling_param.top_k = 'not a number'  # torch.tensor() over the batch's top_k raises


def sequences(engine, n):
    return [next(iter(engine.scheduler.get_session(i).sequences.values())) for i in range(n)]


def test_a_request_that_breaks_prefill_fails_alone(focus_logs):
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    engine = make_engine()
    resps = add_requests(engine, [[5, 6, 7], [8, 9], [10, 11, 12, 13]])
    maker = make_maker(engine)
    seqs = sequences(engine, 3)
    break_sampling(seqs[1])
    maker.sampling_strategy.session_to_cleanup = [7]  # an ended session's sampler state, due for clean-up

    payload = maker._make_forward_inputs(True)

    assert [s.session_id for s in payload['running']] == [0, 2]  # the step, without the broken request
    assert payload['inputs'].seq_length.tolist() == [3, 4]
    # the failed attempt and the probes took the clean-up list; the step that is sent must still carry it
    assert payload['sampling_inputs'].session_to_cleanup == [7]
    assert resps[1].type == ResponseType.INTERNAL_ENGINE_ERROR and resps[1].is_done and resps[1].event.is_set()
    assert resps[1].err_msg.startswith('TypeError: ') and "'str'" in resps[1].err_msg  # the probe's exception
    assert seqs[1].status == MessageStatus.STOPPED
    assert [s.status for s in (seqs[0], seqs[2])] == [MessageStatus.READY] * 2
    assert not resps[0].event.is_set() and not resps[2].event.is_set()
    (message, ) = [m for m in focus_logs.messages() if 'scheduled' in m]
    assert 'session 1' in message and 'fails alone' in message


def test_a_request_that_breaks_decode_fails_alone_and_the_indices_skip_it():
    """Decode steps index the model agent's device state by position in the running list: the broken
    request stays in that list, stopped, and the step's indices leave it out (as for an abort)."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    engine = make_engine()
    resps = add_requests(engine, [[5, 6, 7], [8, 9], [10, 11]])
    maker = make_maker(engine)
    payload = maker._make_forward_inputs(True)
    running = payload['running']
    engine.scheduler.activate_seqs(running)  # what the main loop does once the prefill was dispatched
    maker.update_running_seqs(running, payload['inputs'])
    break_sampling(running[1])

    payload = maker._make_forward_inputs(False)

    assert payload['inputs'] is None and payload['delta'].indice_cpu.tolist() == [0, 2]
    assert [s.session_id for s in payload['running']] == [0, 2]
    assert [s.session_id for s in maker.running_seqs] == [0, 1, 2]  # the agent's layout, unchanged
    assert running[1].status == MessageStatus.STOPPED
    assert resps[1].type == ResponseType.INTERNAL_ENGINE_ERROR and resps[1].event.is_set()
    assert [c['session_id'] for c in payload['sampling_inputs'].session_ctx] == [0, 2]  # the healthy rows' inputs


def test_a_failure_no_request_explains_is_not_swallowed(focus_logs, monkeypatch):
    """Every request builds alone, so the batch's failure is the engine's: upstream's behaviour (the
    exception leaves the loop, patch 11 reports it), with a log line saying so; no request is failed."""
    engine = make_engine()
    resps = add_requests(engine, [[5, 6], [7, 8]])
    maker = make_maker(engine)
    real = maker.sampling_strategy.make_sampling_inputs

    def batch_only_failure(seqs):
        if len(seqs) > 1:
            raise RuntimeError('batched tensors do not fit')
        return real(seqs)

    monkeypatch.setattr(maker.sampling_strategy, 'make_sampling_inputs', batch_only_failure)
    with pytest.raises(RuntimeError, match='batched tensors do not fit'):
        maker._make_forward_inputs(True)
    assert not any(r.event.is_set() for r in resps)
    assert any('no single request can be blamed' in m for m in focus_logs.messages())


def test_unsafe_configurations_keep_upstreams_behaviour():
    """SSM prefix caching pins checkpoints for the batch: nothing is retried, the error propagates."""
    engine = make_engine()
    resps = add_requests(engine, [[5, 6], [7, 8]])
    maker = make_maker(engine)
    maker.config.is_ssm = True
    maker.config.enable_prefix_caching = True
    maker._prepare_prefill_cache_inputs = lambda seqs, save_steps=None: None  # no SSM state on this CPU stub
    break_sampling(sequences(engine, 2)[0])
    with pytest.raises(TypeError):
        maker._make_forward_inputs(True)
    assert not any(r.event.is_set() for r in resps)


def test_upstream_without_the_guard_raises_out_of_the_step():
    """The defect the guard is for: one request's broken parameters fail upstream's whole step."""
    engine = make_engine()
    add_requests(engine, [[5, 6], [7, 8]])
    maker = make_maker(engine)
    break_sampling(sequences(engine, 2)[1])
    upstream = type(maker)._make_forward_inputs.__lmdeploy_focus_upstream__
    with pytest.raises(TypeError):
        upstream(maker, True)
