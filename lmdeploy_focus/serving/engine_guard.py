"""The engine's last line of defence: an exception while adding one request fails that request only.

Upstream's ``Engine._on_add_message`` handles a batch of ADD_MESSAGE requests inside the engine's
request loop; any exception there (``AssertionError: Empty input is not allowed.`` for an empty prompt,
or whatever a future bad input triggers) ends the loop, every in-flight request ends with
``ENGINE_STOP_ERROR`` and the KV cache is released. :func:`isolate_add_message` runs upstream's
handler one request at a time (it is a per-request loop upstream too), and a request whose handler
raises is answered ``INTERNAL_ENGINE_ERROR`` alone: its sequence, if it was already queued, is
stopped so the scheduler never runs it, and the log names the session and the exception.

:func:`record_loop_failure` / :func:`health_with_cause`: if the loop dies anyway, the exception is kept
and appended to the engine's health message, which travels to the api_server (``/health``, the log).
"""
import asyncio
import collections
import functools

import numpy as np
import torch

from ..log import logger
from .limits import is_hybrid
from .validation import FieldError, ModelLimits, check_no_kv_migration, check_sampling_param

LOOP_ERROR_ATTR = '_lmdeploy_focus_loop_error'


def _session_sequences(engine, session_id) -> list:
    """The sequences of the engine's session ``session_id`` (none if there is no such session)."""
    scheduler = getattr(engine, 'scheduler', None)
    session = scheduler.get_session(session_id) if scheduler is not None and session_id is not None else None
    return list(session.sequences.values()) if session is not None else []


def _stop_queued_sequences(engine, session_id) -> None:
    from lmdeploy.pytorch.messages import MessageStatus
    for seq in _session_sequences(engine, session_id):
        if seq.status in (MessageStatus.WAITING, MessageStatus.READY):
            try:
                seq.state.stop()
            except Exception:  # never let the clean-up take the loop down either
                logger.exception('could not stop sequence %s of session %s', getattr(seq, 'seq_id', '?'), session_id)


def fail_request(engine, req, exc: BaseException, response_type) -> None:
    data = req.data if isinstance(req.data, dict) else {}
    session_id = data.get('session_id')
    num_ids = len(data['token_ids']) if data.get('token_ids') is not None else None
    logger.error('request of session %s (%s input tokens) failed while being added to the engine: %s: %s; '
                 'it fails alone, the engine loop goes on', session_id, num_ids, type(exc).__name__, exc,
                 exc_info=exc)
    _stop_queued_sequences(engine, session_id)
    engine._response(req.resp, response_type, err_msg=f'{type(exc).__name__}: {exc}')


class RefusedRequest(ValueError):
    """Refused before upstream's handler touched anything: the session's other sequences stay as they are."""


class BusySession(RefusedRequest):
    """A second request on a session whose request is still in progress."""


# how many requests each (session id, sender id) had refused as BusySession whose END_SESSION has not arrived yet
BUSY_REFUSALS_ATTR = '_lmdeploy_focus_busy_refusals'


def _in_progress(status) -> bool:
    from lmdeploy.pytorch.messages import MessageStatus
    return status in (MessageStatus.WAITING, MessageStatus.READY, MessageStatus.RUNNING)


def _refuse(engine, req, exc: RefusedRequest, response_type) -> None:
    data = req.data if isinstance(req.data, dict) else {}
    logger.warning('request of session %s refused: %s', data.get('session_id'), exc)
    engine._response(req.resp, response_type, err_msg=f'{type(exc).__name__}: {exc}')


def check_engine_request(engine, req) -> None:
    """What the engine itself cannot serve, for requests that skip ``AsyncEngine`` (the raw ``Engine``
    API, and multi-turn sessions whose history AsyncEngine does not count):

    * a token id outside the model's vocabulary: the embedding's gather trips a device-side assert, which
      ends the CUDA context and so the process, every request with it (multimodal requests are left to the
      input processor, whose placeholder ids are the model's own);
    * a second request on a session whose request is still in progress: upstream's handler rewrites the
      running sequence's tokens and sampling parameters before it raises (RUNNING) or silently takes it over
      (WAITING), so the first request is corrupted or never answered;
    * ``preserve_cache`` / ``migration_request`` on an engine that is not prefill/decode-disaggregated: it would
      keep the session's KV cache for good, or wait for a migration it never runs;
    * sampling parameters the batch's sampler cannot take (``top_k`` above the vocabulary, stop / bad token ids
      outside it or the mask token, too many logprobs, an n-gram window overflow, a NaN): the
      sampler runs inside the step, so its error would end the engine loop (on a GPU a bad gather, the process);
    * a diffusion model's decode steps return logits of the masked rows only (patch 17): no output logits, and no
      perplexity (``return_ppl``: a left-to-right cross-entropy);
    * a diffusion request with no token budget (``max_new_tokens <= 0``, or a session with no room left,
      which upstream clamps to that): upstream's decode inputs leave its row out while the prefill added
      one, so every later sequence of the batch would decode another's row.
    """
    data = req.data if isinstance(req.data, dict) else {}
    sampling_param = data.get('sampling_param')
    session_id = data.get('session_id')
    sequences = _session_sequences(engine, session_id)
    busy = [seq for seq in sequences if _in_progress(seq.status)]
    if busy:
        raise BusySession(f'session {session_id} already has a request in progress ({busy[0].status.name}): '
                             f'send the next turn after it has finished or after stop_session({session_id})')
    if is_hybrid(getattr(getattr(engine, 'engine_config', None), 'role', None)):
        try:
            check_no_kv_migration(data.get)
        except FieldError as e:
            raise RefusedRequest(e.message) from None
    model_config = getattr(engine, 'model_config', None)
    if data.get('input_multimodals') and getattr(engine, 'input_processor', None) is None:
        # upstream logs 'Do not support Multimodal inputs' and queues the ids as they are, unchecked: an id past the
        # vocabulary then fails the embedding (a device assert on the GPU ends the process)
        raise RefusedRequest('multimodal inputs are not supported by this model (it has no input processor): send '
                             'token_ids without multimodal')
    if not data.get('input_multimodals'):
        _check_vocabulary(data.get('token_ids'), getattr(model_config, 'vocab_size', None))
    dllm = model_config is not None and getattr(model_config, 'model_paradigm', 'ar') == 'dllm'
    if sampling_param is not None:
        limits = ModelLimits(vocab_size=getattr(model_config, 'vocab_size', None), session_len=None,
                             mask_token=getattr(model_config, 'dllm_mask_token', None) if dllm else None)
        try:
            check_sampling_param(sampling_param, limits)
        except FieldError as e:
            raise RefusedRequest(e.message) from None
    if not dllm:
        return
    if getattr(sampling_param, 'out_logits', False):
        raise RefusedRequest('output_logits is not available for diffusion models (allowed: None)')
    if getattr(sampling_param, 'out_ce_loss', False):
        raise RefusedRequest('return_ppl (a left-to-right cross-entropy) is not available for diffusion models '
                             '(allowed: False)')
    max_new_tokens = getattr(sampling_param, 'max_new_tokens', None)
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RefusedRequest(f'max_new_tokens must be >= 1 for diffusion models, got {max_new_tokens}')
    max_session_len = getattr(engine, 'max_session_len', None)
    token_ids = data.get('token_ids')
    if max_session_len is not None and token_ids is not None:
        # a session's earlier turns count (an upper bound: a half-decoded block a stopped turn left is trimmed)
        history = sum(int(getattr(seq, 'num_valid_ids', 0)) for seq in sequences)
        if history + len(token_ids) >= max_session_len:
            raise RefusedRequest(f'session {session_id} has no room left: {history} tokens of earlier turns and '
                                 f'{len(token_ids)} new ones of max_session_len {max_session_len}; start a new '
                                 f'session or raise session_len')


def _check_vocabulary(token_ids, vocab_size) -> None:
    """Every id in ``[0, vocab_size)``; one vectorised pass (a prompt of 100k ids costs well under a ms)."""
    if token_ids is None or vocab_size is None:
        return
    if isinstance(token_ids, torch.Tensor):  # the raw Engine API takes what upstream's _to_ndarray takes
        token_ids = token_ids.detach().cpu().numpy()
    try:
        ids = np.asarray(token_ids)
    except (TypeError, ValueError) as exc:  # e.g. a ragged list
        raise RefusedRequest(f'token_ids must be a flat sequence of integers ({exc})') from None
    if ids.ndim != 1:
        raise RefusedRequest(f'token_ids must be a flat sequence of integers, got shape {ids.shape}')
    if ids.size == 0:
        return  # an empty prompt is upstream's to refuse (its assert fails that request alone)
    if ids.dtype.kind not in 'iu':
        raise RefusedRequest(f'token_ids must be integers, got {ids.dtype} values')
    outside = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if outside.size:
        first = int(outside[0])
        raise RefusedRequest(f'token_ids[{first}] = {int(ids[first])} is outside the model\'s vocabulary '
                             f'[0, {vocab_size}) ({outside.size} such ids); tokenize with this model\'s tokenizer')


def isolate_add_message(upstream, response_type):

    @functools.wraps(upstream)
    def _on_add_message(self, reqs, **kwargs):
        for req in reqs:
            try:
                check_engine_request(self, req)
            except RefusedRequest as exc:
                if isinstance(exc, BusySession):  # counted: one sender may be refused on it more than once
                    refusals = self.__dict__.setdefault(BUSY_REFUSALS_ATTR, collections.Counter())
                    refusals[(req.data['session_id'], req.sender_id)] += 1
                _refuse(self, req, exc, response_type)
                continue
            except Exception as exc:  # a check that trips over a malformed request fails that request only
                fail_request(self, req, exc, response_type)
                continue
            try:
                upstream(self, [req], **kwargs)
            except Exception as exc:
                fail_request(self, req, exc, response_type)

    _on_add_message.__lmdeploy_focus_upstream__ = upstream
    return _on_add_message


def keep_the_busy_session(upstream):
    """``Engine._on_end_session`` that leaves a session alone when the END_SESSION comes from the sender whose
    request on it was refused as :class:`BusySession` while another request is still in progress there.
    ``EngineInstance.async_stream_infer`` ends its session in a ``finally`` whatever the reply, and upstream's
    handler ends a session with a running sequence without answering it: the refused caller's clean-up freed the
    first request's sequence and left that request waiting forever (raw ``Engine`` API, found by a bug-hunting
    review). Every other END_SESSION is upstream's."""

    @functools.wraps(upstream)
    def _on_end_session(self, reqs, **kwargs):
        refusals = self.__dict__.get(BUSY_REFUSALS_ATTR)
        if not refusals:
            return upstream(self, reqs, **kwargs)
        passed = []
        for req in reqs:
            session_id = req.data['session_id']
            key = (session_id, req.sender_id)
            if refusals[key] > 0:
                refusals[key] -= 1
                if refusals[key] == 0:
                    del refusals[key]
                if any(_in_progress(seq.status) for seq in _session_sequences(self, session_id)):
                    logger.info('session %s: END_SESSION of the request refused on it left alone (its request in '
                                'progress ends it)', session_id)
                    if req.data.get('response', True):
                        from lmdeploy.messages import ResponseType
                        self._response(req.resp, ResponseType.SUCCESS)
                    continue
            passed.append(req)
        if passed:
            upstream(self, passed, **kwargs)

    _on_end_session.__lmdeploy_focus_upstream__ = upstream
    return _on_end_session


def answer_before_ending(upstream):
    """``Engine.end_session(session_id)`` that first answers a request still in progress in the session (CANCEL, as
    ``stop_session`` does). Upstream frees the session's sequences and leaves such a request waiting forever: an
    END_SESSION sent while the session's request runs (raw ``Engine`` API), or one that a caller's stream clean-up
    sends late, after its next turn on the session was queued (found by a bug-hunting review)."""

    @functools.wraps(upstream)
    def end_session(self, session_id):
        from lmdeploy.messages import ResponseType
        for seq in _session_sequences(self, session_id):
            resp = getattr(seq, 'resp', None)
            if _in_progress(seq.status) and resp is not None and not resp.is_done and resp.type != ResponseType.FINISH:
                logger.info('session %s ended while its request was in progress: the request is answered CANCEL',
                            session_id)
                self.req_manager.reject_request(resp)
        return upstream(self, session_id)

    end_session.__lmdeploy_focus_upstream__ = upstream
    return end_session


def record_loop_failure(upstream):

    @functools.wraps(upstream)
    async def async_loop(self):
        try:
            return await upstream(self)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            setattr(self, LOOP_ERROR_ATTR, f'{type(exc).__name__}: {exc}')
            raise

    async_loop.__lmdeploy_focus_upstream__ = upstream
    return async_loop


def health_with_cause(upstream):

    @functools.wraps(upstream)
    def get_local_health_status(self):
        status = upstream(self)
        cause = getattr(self, LOOP_ERROR_ATTR, None)
        if not status.get('alive', True) and cause:
            status = dict(status, message=f"{status.get('message') or 'Engine loop stopped.'} Cause: {cause}")
        return status

    get_local_health_status.__lmdeploy_focus_upstream__ = upstream
    return get_local_health_status
