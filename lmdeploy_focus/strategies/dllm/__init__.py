"""DLLM strategies with delayed cache and FOCUS (subclasses of LMDeploy 0.18's DLLM strategies)."""
from .factory import FocusDLLMStrategyFactory

__all__ = ['FocusDLLMStrategyFactory']
