"""Patch 12: the api_server reports a dead engine on /health and answers inference routes 503; a client session id
taken between validation and mapping is a 409."""


def apply(api_server_module) -> None:
    from ..serving import liveness
    from ..serving.user_sessions import conflict_on_a_taken_id

    if getattr(api_server_module.create_lifespan_handler, '__lmdeploy_focus_upstream__', None) is not None:
        return
    api_server_module.create_lifespan_handler = liveness.lifespan(api_server_module.create_lifespan_handler)
    api_server_module.EngineSleepingMiddleware = liveness.gate_middleware(api_server_module.EngineSleepingMiddleware)
    api_server_module.EngineHealthMonitor = liveness.health_monitor(api_server_module.EngineHealthMonitor)
    api_server_module.ServerContext.create_session = conflict_on_a_taken_id(api_server_module.ServerContext.create_session)
