"""Patch 12: the api_server reports a dead engine on /health and answers inference routes 503."""


def apply(api_server_module) -> None:
    from ..serving import liveness

    if getattr(api_server_module.create_lifespan_handler, '__lmdeploy_focus_upstream__', None) is not None:
        return
    api_server_module.create_lifespan_handler = liveness.lifespan(api_server_module.create_lifespan_handler)
    api_server_module.EngineSleepingMiddleware = liveness.gate_middleware(api_server_module.EngineSleepingMiddleware)
    api_server_module.EngineHealthMonitor = liveness.health_monitor(api_server_module.EngineHealthMonitor)
