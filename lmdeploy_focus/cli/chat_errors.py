"""``lmdeploy chat``: a turn that fails says why.

Why: upstream's chat loop prints each response's ``text`` only; a failed turn (``finish_reason`` 'error': the
conversation no longer fits the session, a refused sampling value) printed nothing, and its empty answer was
appended to the transcript, so every later turn failed the same way, silently (found by a bug-hunting review).
How: in the chat process, ``Pipeline.stream_infer`` stops at an error response with the message on stderr and a
``KeyboardInterrupt``, which upstream's loop already handles as an abandoned turn (the request is aborted and the
user's message taken back out of the transcript). Removed by: upstream's chat loop printing errors.
"""
import functools
import sys

HINT = 'type "end" to start a new conversation, or "exit"'


def report_errors(upstream):
    """Wrap ``Pipeline.stream_infer`` (a generator of ``Response``)."""

    @functools.wraps(upstream)
    def stream_infer(self, *args, **kwargs):
        for resp in upstream(self, *args, **kwargs):
            if getattr(resp, 'finish_reason', None) == 'error':
                message = resp.error_message or 'the request failed'
                print(f'\nError: {message} ({HINT})', file=sys.stderr, flush=True)
                raise KeyboardInterrupt  # upstream's chat loop: abort the request, drop the user's turn
            yield resp

    stream_infer.__lmdeploy_focus_upstream__ = upstream
    return stream_infer
