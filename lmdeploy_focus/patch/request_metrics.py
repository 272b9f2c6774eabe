"""Patch 7: wrap ``EngineLoop._make_infer_outputs`` to hand per-request DLLM statistics to the request."""
import functools


def apply(engine_loop_module) -> None:
    from ..strategies.dllm.request_stats import attach_request_stats

    loop_cls = engine_loop_module.EngineLoop
    upstream = loop_cls._make_infer_outputs

    @functools.wraps(upstream)
    def _make_infer_outputs(self, batched_outputs, running, *args, **kwargs):
        outputs = upstream(self, batched_outputs, running, *args, **kwargs)
        return attach_request_stats(outputs, running)

    _make_infer_outputs.__lmdeploy_focus_upstream__ = upstream
    loop_cls._make_infer_outputs = _make_infer_outputs
