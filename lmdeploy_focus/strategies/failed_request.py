"""One request fails alone: its sequence stops and its request is answered ``INTERNAL_ENGINE_ERROR``.

Used where the engine can tell whose failure it is and the rest of the batch can go on: the schedule guard
(a request whose next step cannot be built, :mod:`lmdeploy_focus.serving.schedule_guard`) and the DLLM
sampling guard (a request whose own logits processor raised, :mod:`.dllm.processor_guard`).
"""
from ..log import logger


def fail_request(seq, error: BaseException | str, when: str, respond=None, details: str | None = None) -> None:
    """Stop ``seq`` and answer its request with ``error`` (an exception, or its ``'Type: message'`` text and the
    traceback text in ``details``). The response is marked done, so later step outputs already queued for it keep
    its type (``EngineLoop._send_resp``); ``respond`` is the engine's ``RequestManager.response``, which in 0.18 only
    wakes the waiter (``resp.event.set()``, contract-tested). The client sees the type (upstream's engine instance
    yields no message for an error), the log names the session and the error."""
    from lmdeploy.pytorch.engine.request import ResponseType
    from lmdeploy.pytorch.messages import MessageStatus
    text = f'{type(error).__name__}: {error}' if isinstance(error, BaseException) else error
    logger.error('request of session %s failed %s: %s; it fails alone, the engine loop goes on%s', seq.session_id,
                 when, text, f'\n{details}' if details else '',
                 exc_info=error if isinstance(error, BaseException) else None)
    if seq.status != MessageStatus.STOPPED:
        seq.state.stop()
    resp = getattr(seq, 'resp', None)
    if resp is None or resp.type == ResponseType.FINISH:
        return
    resp.type = ResponseType.INTERNAL_ENGINE_ERROR
    resp.err_msg = text
    resp.is_done = True
    if respond is not None:
        respond(resp)
    else:
        resp.event.set()
