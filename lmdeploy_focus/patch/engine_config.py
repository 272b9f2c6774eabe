"""Patch 1: ``lmdeploy.messages.PytorchEngineConfig`` -> the FOCUS subclass (see package docstring)."""
import sys


def apply(messages_module) -> None:
    from ..config.engine_config import PytorchEngineConfig
    upstream = messages_module.PytorchEngineConfig
    messages_module.PytorchEngineConfig = PytorchEngineConfig
    # Normally this hook runs before any lmdeploy module imports the name. When a plugin module was imported first
    # (the patch waits for it while lmdeploy/__init__ runs) or on a late activation, lmdeploy, lmdeploy.archs,
    # lmdeploy.pipeline and the serve engines already hold the upstream class: pipeline(model) built its default
    # config from it, and such an object cannot be pickled (pickle finds the subclass under its name), which
    # upstream's engine checker does on CUDA. Every loaded lmdeploy module's name is moved to the subclass.
    for name, module in list(sys.modules.items()):
        if (name == 'lmdeploy' or name.startswith('lmdeploy.')) and \
                getattr(module, 'PytorchEngineConfig', None) is upstream:
            module.PytorchEngineConfig = PytorchEngineConfig
