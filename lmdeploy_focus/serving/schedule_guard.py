"""Last line of defence, second half (issue 15 item 1): an exception while *scheduling* one request
fails that request alone, not the engine loop.

Where: ``InputsMakerAsync._make_forward_inputs(prefill, enable_empty)`` (patch 16), the synchronous
step that turns the scheduler's choice into the next forward's payload: prefill admission
(``Scheduler.schedule``), decode admission (``schedule_running``), the model inputs
(``create_model_inputs`` and friends), the agent strategy's extra inputs and stopping criteria, the
sampling strategy's sampling inputs. Upstream calls it from the engine's main loop; anything it raises
ends the loop, and every request in flight ends with ``ENGINE_STOP_ERROR``. Nothing has been sent to
the executor yet when it raises, so the step can be rebuilt.

What is attributed: a failure in a builder that reads one request's own data (its token ids,
multimodal inputs, sampling parameters, stop words, DLLM mask). A failure inside the scheduler's
admission of a sequence (before it is READY) is not: the probe cannot repeat admission without its side
effects, so it falls under the first case below.

How a failure is attributed: these builders work on the whole batch, so the exception does not say
whose it is. Each candidate (the sequences this attempt admitted, now READY; the running decode
sequences; the active long-context chunk) is rebuilt alone with the same read-only builders
(:func:`probe`). A sequence whose own inputs cannot be built is the culprit: it is stopped (as an abort
would), its request answered ``INTERNAL_ENGINE_ERROR`` with the exception, and the log names its
session. The other sequences this attempt admitted go back to WAITING (upstream's own preemption path),
and the step is made again without the culprit.

Where it is not safe, upstream's behaviour is kept (the exception ends the loop, patch 11 names the
cause in ``/health``), and the log says why:
* no candidate fails alone: the failure belongs to the batch or the engine (a shape no single request
  has, a strategy bug, out of memory), and no request can be blamed;
* SSM models with prefix caching, or a KV connector: building the payload pins state checkpoints /
  reserves remote transfers for the batch, which cannot be rolled back from outside;
* a disaggregated role (prefill / decode node): the sequences belong to a migration protocol.
Failures inside the batched forward (the executor, the model) and in the sequence strategy's update
after it (``EngineLoop._make_infer_outputs``) are not covered: by then the model agent's device state
has advanced for the whole batch, and removing one request cannot restore the others' consistency.
"""
import functools

from ..log import logger
from ..strategies.failed_request import fail_request

GUARD_ATTR = '_lmdeploy_focus_req_manager'


def _status():
    from lmdeploy.pytorch.messages import MessageStatus
    return MessageStatus


def unsafe_reason(maker) -> str | None:
    """Why a failed step may not be rebuilt with fewer requests, or None."""
    from lmdeploy.pytorch.disagg.config import EngineRole
    if maker._ssm_prefix_cache_enabled():
        return 'SSM prefix caching pins state checkpoints for the whole batch'
    if maker.scheduler.has_kv_connector():
        return 'a KV connector reserves transfers for the whole batch'
    if maker.config.role != EngineRole.Hybrid:
        return f'the engine role is {maker.config.role.name}, not Hybrid'
    return None


def probe(maker, seq) -> BaseException | None:
    """Build ``seq``'s inputs alone with the builders of the step it is in; its exception, or None.
    These builders only read the sequence and the scheduler's block tables, except that the sampling
    strategy hands over its ``session_to_cleanup`` list (the caller restores it)."""
    try:
        if seq.status == _status().RUNNING:  # a decode step: block table and sampling inputs
            maker.scheduler.get_block_tables([seq])
        else:  # admitted for prefill (READY) or the active long-context chunk
            inputs = maker.create_model_inputs([seq], True)
            maker.model_agent_strategy.make_extra_inputs([seq], inputs)
            maker.model_agent_strategy.make_stopping_criteria([seq])
        maker.sampling_strategy.make_sampling_inputs([seq])
    except Exception as exc:  # the probe's purpose: any exception is the sequence's own
        return exc
    return None


def fail_sequence(maker, seq, exc: BaseException) -> None:
    """Stop ``seq`` and answer its request with the error (kept: later step outputs cannot overwrite it)."""
    req_manager = getattr(maker, GUARD_ATTR, None)
    fail_request(seq, exc, 'while its next step was being scheduled',
                 respond=None if req_manager is None else req_manager.response)


def _ready(maker):
    return list(maker.scheduler.seq_manager.get_sequences(_status().READY).values())


def _candidates(maker, admitted):
    MessageStatus = _status()
    seen, out = set(), []
    chunk_seq = maker.long_context_chunker.seq if maker.long_context_chunker.enabled() else None
    for seq in [*admitted, *maker.running_seqs, *([chunk_seq] if chunk_seq is not None else [])]:
        if id(seq) in seen or seq.status not in (MessageStatus.READY, MessageStatus.RUNNING):
            continue
        seen.add(id(seq))
        out.append(seq)
    return out


def isolate_forward_inputs(upstream):
    """Wrap ``InputsMakerAsync._make_forward_inputs``: see the module docstring."""

    @functools.wraps(upstream)
    def _make_forward_inputs(self, prefill, enable_empty=False):
        MessageStatus = _status()
        while True:  # each round stops at least one sequence, so this ends
            ready_before = {id(s) for s in _ready(self)}
            # the decode list the model agent's device state is indexed by; upstream may replace it mid-way
            # (create_model_inputs_delta_valid_only) and nothing of this attempt reaches the agent
            running_before = list(self.running_seqs)
            # sessions whose sampler state the next sampling inputs clean up: upstream's
            # make_sampling_inputs hands the list over and empties it (the failed attempt or a probe may)
            cleanup_before = list(getattr(self.sampling_strategy, 'session_to_cleanup', ()))
            try:
                return upstream(self, prefill, enable_empty)
            except Exception:
                self.running_seqs = running_before
                admitted = [s for s in _ready(self) if id(s) not in ready_before]
                reason = unsafe_reason(self)
                culprits = [] if reason else [(s, e) for s in _candidates(self, admitted)
                                              if (e := probe(self, s)) is not None]
                if hasattr(self.sampling_strategy, 'session_to_cleanup'):
                    self.sampling_strategy.session_to_cleanup = cleanup_before
                if not culprits:
                    logger.error('building the next forward failed and no single request can be blamed (%s): the '
                                 'engine loop stops', reason or 'every request builds alone')
                    raise
                for seq, seq_exc in culprits:
                    fail_sequence(self, seq, seq_exc)
                blamed = {id(s) for s, _ in culprits}
                chunk = self.long_context_chunker
                if chunk.enabled() and chunk.seq is not None and (id(chunk.seq) in blamed
                                                                  or chunk.seq.status == MessageStatus.READY):
                    chunk.clear()
                # the rest of this attempt's admissions wait for the rebuilt step (upstream's preemption)
                self.scheduler.preempt_seqs([s for s in admitted if s.status == MessageStatus.READY])
                # a blamed decode sequence stays in running_seqs, STOPPED: upstream's decode admission then
                # leaves it out of the step's indices, as for an aborted request

    _make_forward_inputs.__lmdeploy_focus_upstream__ = upstream
    return _make_forward_inputs


def attach_request_manager(upstream):
    """Wrap ``build_inputs_maker(engine)``: the maker answers a failed request through the engine's
    request manager, as the engine loop does."""

    @functools.wraps(upstream)
    def build_inputs_maker(engine):
        maker = upstream(engine)
        setattr(maker, GUARD_ATTR, getattr(engine, 'req_manager', None))
        return maker

    build_inputs_maker.__lmdeploy_focus_upstream__ = upstream
    return build_inputs_maker
