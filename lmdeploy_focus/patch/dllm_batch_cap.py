"""Patch 19: upstream's DLLM batch cap also for a block length read from the model."""


def apply(engine_module) -> None:
    from ..config.dllm_batch_cap import capping_engine_checker

    if getattr(engine_module.EngineChecker, '__lmdeploy_focus_upstream__', None) is not None:
        return
    engine_module.EngineChecker = capping_engine_checker(engine_module.EngineChecker)
