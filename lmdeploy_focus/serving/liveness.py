"""The api_server knows when its engine loop has died, says so on ``/health``, answers new inference
requests 503 at once, and logs the cause.

Upstream polls the engine's health every 12 s and ``/health`` may report the last (healthy) probe until
the next one; inference requests meanwhile go to a dead engine. Here a watcher started with the server
asks the engine every second (``engine.get_health_status()``: an in-process check, or one RPC to the
engine process; the process being gone is noticed without one) and, at the first ``alive: False``, latches
the engine as dead with the engine's message, which names the exception that ended the loop
(:mod:`.engine_guard`). A request that ends with ``ENGINE_STOP_ERROR`` triggers a check at once.
A probe that only times out (an engine busy with a long step) latches nothing.
"""
from __future__ import annotations

import asyncio
import contextlib

from ..log import logger

POLL_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 10.0


class EngineLiveness:

    def __init__(self):
        self.cause: str | None = None
        self.async_engine = None
        self._task: asyncio.Task | None = None
        self._probe: asyncio.Task | None = None

    @property
    def dead(self) -> bool:
        return self.cause is not None

    def attach(self, async_engine) -> None:
        self.async_engine, self.cause = async_engine, None

    def mark_dead(self, cause: str) -> None:
        if self.cause is None:
            self.cause = cause or 'the engine reported itself not alive'
            logger.error('The inference engine has stopped: %s. /health reports it and new inference requests '
                         'get 503; restart the server.', self.cause)

    def unavailable_error(self):
        from lmdeploy.serve.core.exceptions import ErrorCode, RequestError
        return RequestError(ErrorCode.ENGINE_UNAVAILABLE,
                            f'The inference engine has stopped ({self.cause}); restart the server.')

    async def check(self) -> None:
        engine = self.async_engine
        if engine is None or self.dead or getattr(engine, 'is_sleeping', False):
            return
        try:
            status = await asyncio.wait_for(engine.engine.get_health_status(), PROBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return
        except Exception as exc:  # the RPC itself failing is no proof of death; the next probe decides
            logger.debug('engine health probe failed: %r', exc)
            return
        if not status.get('alive', True):
            self.mark_dead(status.get('message') or '')

    def poke(self) -> None:
        """Check now (from the event loop), e.g. after a request ended with ENGINE_STOP_ERROR."""
        if self.async_engine is None or self.dead or (self._probe is not None and not self._probe.done()):
            return
        try:
            self._probe = asyncio.get_running_loop().create_task(self.check())
        except RuntimeError:
            pass

    async def _watch(self, interval: float) -> None:
        while not self.dead:
            await self.check()
            await asyncio.sleep(interval)

    def start(self, interval: float = POLL_INTERVAL_S) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(interval), name='FocusEngineLiveness')

    async def stop(self) -> None:
        for task in (self._task, self._probe):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._probe = None


LIVENESS = EngineLiveness()


# routes a diffusion model cannot serve: /pooling asks the engine for every position's logits, which a DLLM step
# does not produce (patch 17); the engine refused it and upstream's route turned that into a bare 500
DLLM_UNSERVED_ROUTES = {('POST', '/pooling'): 'pooling'}


def gate_middleware(upstream_cls, liveness: EngineLiveness = LIVENESS):
    """A subclass of upstream's ``EngineSleepingMiddleware`` that also answers its protected (inference)
    routes 503 while the engine is dead, and :data:`DLLM_UNSERVED_ROUTES` 400 for a diffusion model."""
    from starlette.datastructures import URL

    from lmdeploy.serve.utils.server_utils import protocol_error_response

    from .limits import engine_limits
    from .validation import FieldError

    class EngineAliveMiddleware(upstream_cls):

        def __call__(self, scope, receive, send):
            if scope['type'] == 'http' and scope['method'] != 'OPTIONS':
                url_path = URL(scope=scope).path.removeprefix(scope.get('root_path', ''))
                if liveness.dead and (scope['method'], url_path) in self.protected_routes:
                    return protocol_error_response(url_path, liveness.unavailable_error())(scope, receive, send)
                route = DLLM_UNSERVED_ROUTES.get((scope['method'], url_path))
                engine = liveness.async_engine
                if route is not None and engine is not None and engine_limits(engine).dllm:
                    error = FieldError(route, 'not available for diffusion models (a decode step has logits of its '
                                       'masked rows only); use /v1/chat/completions or /v1/completions')
                    return protocol_error_response(url_path, error.to_request_error())(scope, receive, send)
            return super().__call__(scope, receive, send)

    EngineAliveMiddleware.__lmdeploy_focus_upstream__ = upstream_cls
    return EngineAliveMiddleware


def health_monitor(upstream_cls, liveness: EngineLiveness = LIVENESS):
    """A subclass of upstream's ``EngineHealthMonitor`` whose snapshot is unhealthy, with the cause, as
    soon as the engine is known dead."""

    class FocusEngineHealthMonitor(upstream_cls):

        def snapshot(self) -> dict:
            if liveness.dead:
                return dict(status='unhealthy', message=liveness.unavailable_error().message)
            return super().snapshot()

    FocusEngineHealthMonitor.__lmdeploy_focus_upstream__ = upstream_cls
    return FocusEngineHealthMonitor


def lifespan(upstream_factory, liveness: EngineLiveness = LIVENESS):
    """Wrap ``create_lifespan_handler``: the watcher runs while the server does."""
    import functools

    @functools.wraps(upstream_factory)
    def create_lifespan_handler(backend_config, async_engine, context):
        upstream_handler = upstream_factory(backend_config, async_engine, context)

        @contextlib.asynccontextmanager
        async def lifespan_handler(app):
            async with upstream_handler(app):
                liveness.attach(async_engine)
                liveness.start()
                try:
                    yield
                finally:
                    await liveness.stop()

        return lifespan_handler

    create_lifespan_handler.__lmdeploy_focus_upstream__ = upstream_factory
    return create_lifespan_handler
