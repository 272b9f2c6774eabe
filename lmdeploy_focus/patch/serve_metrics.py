"""Patch 13: DLLM / FOCUS series on the api_server's ``/metrics`` (see package docstring)."""


def apply(serve_core_module) -> None:
    from ..serving.metrics import wrap_build_stat_loggers, wrap_update_from_output

    # applied when the package ``lmdeploy.serve.core`` finishes loading: its ``__init__`` imports
    # ``async_engine`` (whose own slot is patch 10), which imports ``lmdeploy.metrics.stats``
    async_engine_module = serve_core_module.async_engine
    engine_cls = async_engine_module.AsyncEngine
    if getattr(engine_cls._build_stat_loggers, '__lmdeploy_focus_upstream__', None) is None:
        engine_cls._build_stat_loggers = wrap_build_stat_loggers(engine_cls._build_stat_loggers)
    stats_cls = async_engine_module.IterationStats
    if getattr(stats_cls.update_from_output, '__lmdeploy_focus_upstream__', None) is None:
        stats_cls.update_from_output = wrap_update_from_output(stats_cls.update_from_output)
