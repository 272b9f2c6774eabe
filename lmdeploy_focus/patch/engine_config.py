"""Patch 1: ``lmdeploy.messages.PytorchEngineConfig`` -> the FOCUS subclass (see package docstring)."""
import sys


def apply(messages_module) -> None:
    from ..config.engine_config import PytorchEngineConfig
    messages_module.PytorchEngineConfig = PytorchEngineConfig
    # Normally this hook runs before lmdeploy/__init__ re-exports the name; on a late activation the
    # package attribute already holds the upstream class.
    package = sys.modules.get('lmdeploy')
    if package is not None and hasattr(package, 'PytorchEngineConfig'):
        package.PytorchEngineConfig = PytorchEngineConfig
