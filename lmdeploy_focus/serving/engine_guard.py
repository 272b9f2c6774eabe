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
import functools

from ..log import logger

LOOP_ERROR_ATTR = '_lmdeploy_focus_loop_error'


def _stop_queued_sequences(engine, session_id) -> None:
    from lmdeploy.pytorch.messages import MessageStatus
    scheduler = getattr(engine, 'scheduler', None)
    session = scheduler.get_session(session_id) if scheduler is not None and session_id is not None else None
    if session is None:
        return
    for seq in list(session.sequences.values()):
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


def check_engine_request(engine, req) -> None:
    """What the engine itself cannot serve, for requests that skip ``AsyncEngine`` (the raw ``Engine``
    API): a diffusion model's decode steps return logits of the masked rows only (patch 17), so a
    request for output logits fails alone here instead of breaking the step's output handling."""
    data = req.data if isinstance(req.data, dict) else {}
    sampling_param = data.get('sampling_param')
    model_config = getattr(engine, 'model_config', None)
    if (getattr(sampling_param, 'out_logits', False) and model_config is not None
            and getattr(model_config, 'model_paradigm', 'ar') == 'dllm'):
        raise ValueError('output_logits is not available for diffusion models (allowed: None)')


def isolate_add_message(upstream, response_type):

    @functools.wraps(upstream)
    def _on_add_message(self, reqs, **kwargs):
        for req in reqs:
            try:
                check_engine_request(self, req)
                upstream(self, [req], **kwargs)
            except Exception as exc:
                fail_request(self, req, exc, response_type)

    _on_add_message.__lmdeploy_focus_upstream__ = upstream
    return _on_add_message


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
