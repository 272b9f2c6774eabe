"""Upstream's real api_server and ``AsyncEngine`` on the CPU over a fake inference backend (tests only).

:func:`build_app` runs upstream's ``serve()`` (router, middlewares, lifespan, health monitor, and our
patches on them) with ``uvicorn.run`` captured and the PyTorch backend replaced by :class:`FakeEngine`:
a backend that answers each request with the prompt's tokens, reversed and cut to ``max_new_tokens``
(a deterministic, checkable output), and that can be killed (its health says so; new requests end
``ENGINE_STOP_ERROR``) the way a dead engine loop is.
"""
from __future__ import annotations

import asyncio

from lmdeploy.messages import EngineOutput, PytorchEngineConfig, ResponseType


class FakeInstance:

    def __init__(self, engine: 'FakeEngine'):
        self.engine = engine

    async def async_stream_infer(self, session_id, input_ids, gen_config=None, **kwargs):
        self.engine.seen.append((session_id, list(input_ids), gen_config))
        if not self.engine.alive:
            yield EngineOutput(ResponseType.ENGINE_STOP_ERROR, [])
            return
        out = list(reversed(input_ids))[:gen_config.max_new_tokens]
        await asyncio.sleep(0)
        yield EngineOutput(ResponseType.SUCCESS, out[:1])
        yield EngineOutput(ResponseType.FINISH, out[1:])

    async def async_cancel(self, session_id):
        return None

    async def async_end(self, session_id):
        return None


class FakeEngine:
    """The backend ``AsyncEngine`` talks to; ``kill(cause)`` makes it a dead engine."""

    def __init__(self, engine_config: PytorchEngineConfig):
        self.engine_config = engine_config
        self.alive = True
        self.cause = ''
        self.seen = []

    def create_instance(self):
        return FakeInstance(self)

    def start_loop(self):
        return True

    def kill(self, cause: str) -> None:
        self.alive, self.cause = False, cause

    async def get_health_status(self) -> dict:
        if not self.alive:
            return dict(alive=False, message=f'PyTorch engine main loop has stopped. Cause: {self.cause}',
                        schedule_metrics=None)
        return dict(alive=True, message='fake engine', schedule_metrics=None)

    def get_schedule_metrics(self):
        return None

    def close(self):
        pass


def async_engine_class():
    from lmdeploy.serve.core import AsyncEngine

    class CPUAsyncEngine(AsyncEngine):

        def _build_pytorch(self, model_path, backend_config, **kwargs):
            return FakeEngine(backend_config)

    return CPUAsyncEngine


def build_app(model_path: str, monkeypatch, **serve_kwargs):
    """Upstream ``serve()`` up to ``uvicorn.run``; returns the FastAPI app (use it in a ``TestClient``)."""
    import logging
    import os

    from lmdeploy.serve.openai import api_server

    # serve() sets the 'lmdeploy' logger's level (ERROR by default) and TM_LOG_LEVEL: both undone, so that
    # later tests still see the plugin's warnings
    lmdeploy_logger = logging.getLogger('lmdeploy')
    old_level = lmdeploy_logger.level
    monkeypatch.setenv('TM_LOG_LEVEL', os.environ.get('TM_LOG_LEVEL', 'ERROR'))
    captured = {}
    cls = async_engine_class()
    monkeypatch.setattr(api_server, 'get_task', lambda *a, **k: ('llm', cls))
    monkeypatch.setattr(api_server.uvicorn, 'run', lambda app, **kw: captured.setdefault('app', app))
    backend_config = serve_kwargs.pop('backend_config', None) or PytorchEngineConfig(max_batch_size=8, enable_metrics=False)
    try:
        api_server.serve(model_path, backend='pytorch', backend_config=backend_config, model_name='m',
                         **serve_kwargs)
    finally:
        lmdeploy_logger.setLevel(old_level)
    return captured['app']
