"""Patch 7: wrap ``EngineLoop._make_infer_outputs``: DLLM block logprobs before it, per-request DLLM
statistics after it."""
import functools


def apply(engine_loop_module) -> None:
    from ..strategies.dllm.request_stats import TrackingDLLMSequenceStrategy, attach_request_stats

    loop_cls = engine_loop_module.EngineLoop
    upstream = loop_cls._make_infer_outputs

    @functools.wraps(upstream)
    def _make_infer_outputs(self, batched_outputs, running, model_inputs, delta):
        prepare = getattr(self.seq_strategy, 'prepare_step_outputs', None)
        if prepare is not None:
            prepare(batched_outputs, running, model_inputs, delta)
        outputs = upstream(self, batched_outputs, running, model_inputs=model_inputs, delta=delta)
        return attach_request_stats(outputs, running, isinstance(self.seq_strategy, TrackingDLLMSequenceStrategy))

    _make_infer_outputs.__lmdeploy_focus_upstream__ = upstream
    loop_cls._make_infer_outputs = _make_infer_outputs
