"""A client's ``session_id`` on the api_server: one request at a time per id, refused as a 400, and never confused
with the server's internal session ids.

Why: upstream's request validators refuse an id as "occupied" by looking it up among the *internal* session ids
(``SessionManager.has``), while the ids clients choose live in ``SessionManager.user_session_id_map``. So a second
request on a client id still in progress passed validation and raised ``ValueError`` when its session was mapped
(a 500), and a free client id that happened to equal some request's internal id was refused (found by a
bug-hunting review). How: the client id is checked against the client ids in progress first (400, ``param``
``session_id``), and upstream's validator sees a session manager whose ``has`` reads client ids; the mapping's own
``ValueError``, which a chat request can still meet when another maps the id while it awaits between validation and
mapping, becomes a 409 ``RequestError`` (the chat path answers it; completions and generate do not suspend there).
Removed by: ``SessionManager.has`` over ``user_session_id_map`` upstream.
"""
from .validation import FieldError


def _uses_client_id(request) -> bool:
    """/v1/completions with a list of prompts: upstream gives each its own session, the client id is not used."""
    return not isinstance(getattr(request, 'prompt', None), list)


def check_session_free(request, session_manager) -> None:
    """Refuse a client ``session_id`` whose earlier request is still in progress on this server."""
    user_id = getattr(request, 'session_id', None)
    if not _uses_client_id(request):
        return
    if user_id not in (None, -1) and user_id in getattr(session_manager, 'user_session_id_map', {}):
        raise FieldError('session_id', f'session {user_id!r} has a request in progress on this server: send the '
                         'next request on it after that one has finished, or abort it (POST /abort_request)')


class _ClientIdSessions:
    """``session_manager`` as upstream's validators should read it: ``has(id)`` over the client ids."""

    def __init__(self, session_manager):
        self._manager = session_manager

    def has(self, user_session_id) -> bool:
        return user_session_id in self._manager.user_session_id_map

    def __getattr__(self, name):
        return getattr(self._manager, name)


class _ClientIdContext:
    """A server context whose ``session_manager`` is :class:`_ClientIdSessions` (everything else delegated)."""

    def __init__(self, server_context):
        self._context = server_context
        self.session_manager = _ClientIdSessions(server_context.session_manager)

    def __getattr__(self, name):
        return getattr(self._context, name)


def reading_client_ids(request, request_validator):
    """Upstream's ``request_validator(request, server_context, **kw)`` with the occupancy check over client ids (as
    it is where the request uses none: upstream's own check, as upstream does)."""
    if not _uses_client_id(request):
        return request_validator

    def validator(request, server_context, **kwargs):
        return request_validator(request, _ClientIdContext(server_context), **kwargs)

    return validator


def conflict_on_a_taken_id(upstream):
    """Wrap ``ServerContext.create_session(user_session_id)``: the mapping's ``ValueError`` becomes a 409."""
    import functools

    @functools.wraps(upstream)
    def create_session(self, user_session_id=None):
        try:
            return upstream(self, user_session_id)
        except ValueError as exc:
            from lmdeploy.serve.core.exceptions import ErrorCode, RequestError
            raise RequestError(ErrorCode.REQUEST_CONFLICT, f'session_id: {exc}; send the next request on it after '
                               'that one has finished') from None

    create_session.__lmdeploy_focus_upstream__ = upstream
    return create_session
