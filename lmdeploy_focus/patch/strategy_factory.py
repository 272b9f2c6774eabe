"""Patch 2: ``lmdeploy.pytorch.strategies.dllm.DLLMStrategyFactory`` -> FocusDLLMStrategyFactory."""


def apply(dllm_module) -> None:
    from ..strategies.dllm.factory import FocusDLLMStrategyFactory
    dllm_module.DLLMStrategyFactory = FocusDLLMStrategyFactory
