"""Where the validation of :mod:`.validation` meets upstream (patches 9 and 10)."""
import functools
from http import HTTPStatus

from .answer_budget import fit_answer
from .limits import engine_limits
from .user_sessions import check_session_free, reading_client_ids
from .validation import FieldError, check_generation_config, check_http_request, check_input_ids

# upstream request models -> the endpoint rules of check_http_request
ENDPOINTS = {'CompletionRequest': 'completions', 'ChatCompletionRequest': 'chat', 'GenerateReqInput': 'generate'}


def wrap_validate_request(upstream):
    """``lmdeploy.serve.openai.endpoints.common.validate_request``: our field rules first (400 with
    ``param``), then upstream's, whose session-id check reads client ids (:mod:`.user_sessions`)."""

    @functools.wraps(upstream)
    def validate_request(request, server_context, request_validator, **validator_kwargs):
        endpoint = ENDPOINTS.get(type(request).__name__)
        if endpoint is not None:
            if endpoint == 'generate' and isinstance(getattr(request, 'stop', None), str):
                # its schema allows one string, as chat's and completions'; upstream passes it on unwrapped
                request.stop = [request.stop]
            try:
                limits = engine_limits(server_context.async_engine)
                check_http_request(request, endpoint=endpoint, dllm=limits.dllm, session_len=limits.session_len)
                check_session_free(request, server_context.session_manager)
            except FieldError as e:
                from lmdeploy.serve.openai.errors import create_error_response
                return create_error_response(HTTPStatus.BAD_REQUEST, e.message, param=e.param)
            request_validator = reading_client_ids(request, request_validator)
        return upstream(request, server_context, request_validator, **validator_kwargs)

    validate_request.__lmdeploy_focus_upstream__ = upstream
    return validate_request


def wrap_build_generation_config(upstream):
    """``lmdeploy.serve.core.generation_config.build_generation_config`` (patch 9c): a sampling value that
    ``GenerationConfig`` refuses (patch 15's ``FieldError``) reaches the caller as upstream's ``RequestError``.
    ``/v1/messages`` and ``/v1/responses`` build their config through ``ChatRunner.prepare`` with upstream's
    own range checks only (``top_p`` in [0, 1]) and catch ``RequestError`` alone: a ``top_p`` of 0 was a 500."""

    @functools.wraps(upstream)
    def build_generation_config(*args, **kwargs):
        try:
            return upstream(*args, **kwargs)
        except FieldError as e:
            raise e.to_request_error() from None

    build_generation_config.__lmdeploy_focus_upstream__ = upstream
    return build_generation_config


def wrap_determine_gen_config(upstream):
    """``AsyncEngine._determine_gen_config(input_ids, gen_config)``: called by ``preprocess`` after
    templating and tokenisation, inside its error handling (a ``RequestError`` there removes the session
    and reaches the caller: 400 from the api_server, an error ``Response`` from ``pipeline()``)."""

    @functools.wraps(upstream)
    def _determine_gen_config(self, input_ids, gen_config=None):
        limits = engine_limits(self)
        tokenizer = self.tokenizer
        try:
            check_generation_config(gen_config, limits, encode=lambda word: tokenizer.encode(word, add_bos=False))
            # a budget the user did not choose (chat's, pipeline()'s default) is cut to the room left, not refused
            gen_config = fit_answer(gen_config, 0 if input_ids is None else len(input_ids), limits.session_len)
            # without a gen_config the budget is upstream's to set (session room); pipeline()'s default is cut above
            max_new_tokens = gen_config.max_new_tokens if gen_config is not None else None
            check_input_ids(input_ids, limits, max_new_tokens=max_new_tokens,
                            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
                            min_new_tokens=gen_config.min_new_tokens if gen_config is not None else None)
        except FieldError as e:
            raise e.to_request_error() from None
        return upstream(self, input_ids, gen_config)

    _determine_gen_config.__lmdeploy_focus_upstream__ = upstream
    return _determine_gen_config


# AsyncEngine scoring methods that skip preprocess (so the request rules never see them) and ask a diffusion model
# for what it does not define; upstream then failed on the engine's refusal with a message that did not say why
NOT_FOR_DIFFUSION = {
    'async_get_ppl': 'get_ppl: perplexity is a left-to-right cross-entropy, which a diffusion model does not define '
                     '(it decodes a block in parallel); not available for this model',
    'async_get_logits': 'get_logits: a diffusion model computes logits for the masked positions of its block only, '
                        'not for every prompt position; not available for this model',
}


def refuse_for_diffusion(upstream, message: str):
    """An ``AsyncEngine`` coroutine method that raises ``ValueError(message)`` for a diffusion model."""

    @functools.wraps(upstream)
    async def method(self, *args, **kwargs):
        if engine_limits(self).dllm:
            raise ValueError(message)
        return await upstream(self, *args, **kwargs)

    method.__lmdeploy_focus_upstream__ = upstream
    return method


def wrap_free_cache(upstream):
    """``AsyncEngine.free_cache(session_id)`` (``POST /distserve/free_cache``, which upstream registers on every
    api_server): on an engine that is not prefill/decode-disaggregated it ended whatever session had that id, a
    running request included, which was then never answered; session ids are small counters, so any client could
    end another's request. Refused there with a 400; a Prefill / Decode engine frees as upstream does."""
    from .limits import is_hybrid

    @functools.wraps(upstream)
    def free_cache(self, session_id):
        if is_hybrid(getattr(getattr(self, 'backend_config', None), 'role', None)):
            from fastapi import HTTPException
            raise HTTPException(status_code=400, detail=(
                'remote_session_id: /distserve/free_cache is only for a prefill/decode-disaggregated server (--role '
                f'Prefill / Decode); this engine is Hybrid, where it would end session {session_id} and the request '
                'running in it'))
        return upstream(self, session_id)

    free_cache.__lmdeploy_focus_upstream__ = upstream
    return free_cache


def wrap_request_error_from_status(upstream, liveness):
    """``AsyncEngine._request_error_from_status``: an engine-unavailable outcome makes the liveness
    watcher check the engine at once."""
    from lmdeploy.serve.core.exceptions import ErrorCode

    @functools.wraps(upstream)
    def _request_error_from_status(status):
        error = upstream(status)
        if error.code == ErrorCode.ENGINE_UNAVAILABLE:
            liveness.poke()
        return error

    _request_error_from_status.__lmdeploy_focus_upstream__ = upstream
    return _request_error_from_status


def wrap_create_request_error_response(upstream):
    """``lmdeploy.serve.openai.errors.create_request_error_response(error, *, param=None)``: ``param``
    defaults to the field of a :class:`FieldError`."""

    @functools.wraps(upstream)
    def create_request_error_response(error, *, param=None):
        return upstream(error, param=param if param is not None else getattr(error, 'param', None))

    create_request_error_response.__lmdeploy_focus_upstream__ = upstream
    return create_request_error_response
