"""A diffusion request whose own ``logits_processors`` raise (or return something that is not its row's scores)
fails alone: the sampler's step finishes for its neighbours, and before the step's outputs become responses the
request is stopped and answered ``INTERNAL_ENGINE_ERROR`` (upstream: the exception ends the engine loop).

Real upstream sequences and responses (``Engine._on_add_message`` over a real scheduler, tests/test_engine_guard.py),
the sampling fix's inputs, and upstream's own call site of custom processors."""
import pickle
import secrets

import pytest
import torch

from test_engine_guard import add_requests, make_engine

L = 4


def doubled(token_ids, scores):
    return scores * 2


class Broken:
    def __init__(self, returns=None):
        self.returns = returns

    def __call__(self, token_ids, scores):
        if self.returns is None:
            raise ValueError('the user code is wrong')
        return self.returns(scores)


def running_requests(processors_of):
    """Three requests, added and scheduled (RUNNING), each with ``processors_of[i]``."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import SamplingParam
    engine = make_engine()
    params = {i: SamplingParam(max_new_tokens=8, logits_processors=ps) for i, ps in enumerate(processors_of)}
    resps = add_requests(engine, [[5, 6, 7], [8, 9], [10, 11, 12]], params)
    seqs = [next(iter(engine.scheduler.get_session(i).sequences.values())) for i in range(3)]
    engine.scheduler.schedule(is_prefill=True)
    for seq, resp in zip(seqs, resps):
        seq.state.activate()
        # as after a step's output: SUCCESS, waiting for the next (the add acknowledgement left other values)
        resp.type, resp.is_done, resp.err_msg = ResponseType.SUCCESS, False, ''
        resp.event.clear()
    return seqs, resps


def sample(seqs, gen):
    """The sampling fix's inputs for the step whose sequence list is ``seqs`` (upstream hands the same list object
    back with the step's outputs), then upstream's custom-processor step on random logits."""
    from lmdeploy.pytorch.engine.logits_process import _apply_custom_logits_processors

    from lmdeploy_focus.strategies.dllm.upstream_fixes.sampling import FixedDLLMSamplingStrategy
    inputs = FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    logits = torch.randn(len(seqs) * L, 40, generator=gen)
    return logits, _apply_custom_logits_processors(inputs.logits_processors, inputs.all_ids, logits.clone())


def prepare_outputs(running):
    """Patch 7's call before the engine loop turns a step's outputs into responses (no logprobs asked)."""
    from types import SimpleNamespace

    from lmdeploy_focus.strategies.dllm.upstream_fixes.outputs import FixedDLLMSequenceStrategy
    FixedDLLMSequenceStrategy(L, 99).prepare_step_outputs(SimpleNamespace(logprobs=None, extra_outputs=None), running,
                                                          None, None)


@pytest.mark.parametrize('broken', [Broken(), Broken(returns=lambda s: None), Broken(returns=lambda s: s[:-1]),
                                    Broken(returns=lambda s: s.to_sparse()), Broken(returns=lambda s: s.to('meta'))],
                         ids=['raises', 'returns None', 'returns a short row', 'returns a sparse row',
                              'returns a meta tensor'])
def test_a_request_whose_processor_fails_is_answered_with_an_error_and_its_neighbours_are_not(broken, focus_logs):
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus

    gen = torch.Generator().manual_seed(secrets.randbits(31))
    seqs, resps = running_requests([[doubled], [doubled, broken], None])

    logits, scores = sample(seqs, gen)  # upstream: the exception (or the row assignment) escapes the step

    assert torch.equal(scores[:L], logits[:L] * 2)  # request 0's processor ran on its rows
    # request 1: its first row as its processors left it before the failure (as upstream's), the others skip them
    # (its tokens are never sent)
    assert torch.equal(scores[L], logits[L] * 2) and torch.equal(scores[L + 1:2 * L], logits[L + 1:2 * L])
    assert torch.equal(scores[2 * L:], logits[2 * L:])
    assert seqs[1].status == MessageStatus.RUNNING and not resps[1].event.is_set()  # nothing failed in the sampler

    prepare_outputs(seqs)  # patch 7, before the outputs

    assert resps[1].type == ResponseType.INTERNAL_ENGINE_ERROR and resps[1].is_done and resps[1].event.is_set()
    expected = 'ValueError: the user code is wrong' if broken.returns is None else 'TypeError: logits processor'
    assert 'does not fit the row' in resps[1].err_msg or broken.returns is None
    assert resps[1].err_msg.startswith(expected)
    # stopped before upstream's update_running / _make_infer_outputs, which skip a sequence that is not RUNNING
    assert seqs[1].status == MessageStatus.STOPPED
    assert [seqs[0].status, seqs[2].status] == [MessageStatus.RUNNING] * 2
    assert all(r.type == ResponseType.SUCCESS and not r.is_done and not r.event.is_set() for r in (resps[0], resps[2]))
    (message, ) = focus_logs.messages()
    assert 'session 1' in message and 'logits processor' in message and 'fails alone' in message


def test_a_failed_request_is_failed_once_for_its_step_and_its_sessions_next_request_is_not():
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    calls = []

    def counted_then_broken(token_ids, scores):
        calls.append(1)
        raise RuntimeError('broken')

    seqs, resps = running_requests([None, [counted_then_broken], None])
    step_n, step_n1 = list(seqs), list(seqs)  # each step's own sequence list
    sample(step_n, gen)
    assert len(calls) == 1  # the request's other rows in the step skip it
    logits, scores = sample(step_n1, gen)  # a step built before step n's outputs were seen: its own failure
    assert len(calls) == 2 and torch.equal(scores, logits)
    prepare_outputs(step_n)
    assert resps[1].type == ResponseType.INTERNAL_ENGINE_ERROR and resps[1].err_msg == 'RuntimeError: broken'
    # the queued step's outputs: the sequence is already stopped, nothing more is answered
    resps[1].event.clear()
    prepare_outputs(step_n1)
    assert not resps[1].event.is_set()

    # the session's next request (a new response object) runs its processors again
    seqs[1].resp = type(resps[1])(type=ResponseType.SUCCESS, sender_id=0, event=None)
    seqs[1].state.activate() if seqs[1].status != MessageStatus.RUNNING else None
    seqs[1].sampling_param.logits_processors = [doubled]
    step = list(seqs)
    logits, scores = sample(step, gen)
    assert torch.equal(scores[L:2 * L], logits[L:2 * L] * 2)
    prepare_outputs(step)
    assert seqs[1].resp.type == ResponseType.SUCCESS


def test_a_processor_that_fails_only_in_a_step_queued_after_the_last_does_not_fail_the_finished_request():
    """Upstream builds (and may sample) step n+1 before it reads step n's outputs. A processor that raises only
    there must not turn step n, where the request finished with its processors applied, into an error."""
    from lmdeploy.messages import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    budget = [L]  # one step's rows, then it raises

    def once(token_ids, scores):
        if not budget[0]:
            raise IndexError('schedule exhausted')
        budget[0] -= 1
        return scores

    seqs, resps = running_requests([None, [once], None])
    step_n, step_n1 = list(seqs), list(seqs)
    sample(step_n, gen)
    sample(step_n1, gen)  # raises here
    prepare_outputs(step_n)  # step n's outputs: not this step's failure
    assert seqs[1].status == MessageStatus.RUNNING and resps[1].type == ResponseType.SUCCESS
    seqs[1].state.stop()  # upstream's update_running: the request finished in step n
    prepare_outputs(step_n1)
    assert resps[1].type == ResponseType.SUCCESS and not resps[1].event.is_set()


def test_a_step_whose_outputs_never_come_leaves_later_steps_with_their_processors():
    """A queued step dropped without outputs (sleep's drain) whose processors failed: the request's later steps
    still run its processors (a stale failure must not make them skip silently)."""
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    flaky = [True]

    def once_broken(token_ids, scores):
        if flaky[0]:
            flaky[0] = False
            raise RuntimeError('transient')
        return scores * 2

    seqs, resps = running_requests([None, [once_broken], None])
    dropped = list(seqs)
    sample(dropped, gen)  # this step's outputs never come
    dropped_id = id(dropped)
    del dropped  # a later step's list must not get its address while its failure is kept (CPython reuses it at once)
    kept = seqs[1].__dict__['_lmdeploy_focus_processor_failures'].by_step[dropped_id]
    assert id(kept.step_list) == dropped_id  # held by the failure, so no later list can get its address
    step = list(seqs)
    logits, scores = sample(step, gen)
    assert torch.equal(scores[L:2 * L], logits[L:2 * L] * 2)
    prepare_outputs(step)
    assert not resps[1].event.is_set()


def test_a_failure_keeps_no_reference_to_the_steps_logits():
    """The engine raises the GC threshold (gen 0: 10,000), so a reference cycle is collected late: a failure must
    not keep the step's [rows, vocab] logits alive through the exception's traceback."""
    import gc
    import weakref

    from lmdeploy_focus.strategies.dllm.processor_guard import RequestProcessors
    seqs, _ = running_requests([None, None, None])
    logits = torch.randn(3 * L, 40)
    alive = weakref.ref(logits)
    guarded = RequestProcessors([Broken()], seqs[1], seqs)
    gc.disable()
    try:
        guarded(None, logits[L])
        del logits
        assert alive() is None
    finally:
        gc.enable()
    (failure, ) = seqs[1].__dict__['_lmdeploy_focus_processor_failures'].by_step.values()
    assert 'the user code is wrong' in failure.traceback


def test_what_upstream_writes_into_a_row_the_guard_writes_too():
    """Upstream assigns each processor's output to the row (``logits[i] = out``): a ``[1, V]`` tensor or a scalar
    fits; the next processor sees the row."""
    from lmdeploy_focus.strategies.dllm.processor_guard import RequestProcessors
    seqs, _ = running_requests([None, None, None])
    row = torch.randn(40)
    expected = row.clone() * 2 + 1
    out = RequestProcessors([lambda ids, s: (s * 2)[None], lambda ids, s: s + 1], seqs[0], seqs)(None, row)
    assert torch.equal(out, expected) and torch.equal(row, expected)
    assert '_lmdeploy_focus_processor_failures' not in seqs[0].__dict__
    RequestProcessors([lambda ids, s: 3.0], seqs[0], seqs)(None, row)
    assert torch.equal(row, torch.full((40, ), 3.0))


def test_in_another_process_a_processor_error_is_upstreams():
    """Pickled (the mp / ray executors, tensor parallelism) the guard has no sequence to fail: it raises."""
    from lmdeploy_focus.strategies.dllm.processor_guard import RequestProcessors
    seqs, _ = running_requests([None, None, None])
    guarded = RequestProcessors([doubled, Broken()], seqs[0], seqs)
    assert guarded(None, torch.ones(3)).shape == (3, )  # here: guarded
    remote = pickle.loads(pickle.dumps(RequestProcessors([doubled], seqs[0])))
    assert torch.equal(remote(None, torch.ones(3)), torch.full((3, ), 2.0))
    with pytest.raises(ValueError, match='user code'):
        pickle.loads(pickle.dumps(RequestProcessors([Broken()], seqs[0])))(None, torch.ones(3))


def test_a_step_without_a_failure_does_not_walk_the_batch():
    """Patch 7 calls the host side every step: with no failure in the step it must not touch the batch's sequences
    (a Python walk over B sequences a step)."""
    from lmdeploy_focus.strategies.dllm.processor_guard import fail_requests_whose_processors_failed

    class Untouchable:
        def __getattribute__(self, name):
            raise AssertionError(f'the batch was walked ({name})')

    fail_requests_whose_processors_failed([Untouchable(), Untouchable()])
