"""Patch 6: ``CUSTOM_MODULE_MAP`` entries for the models lmdeploy-focus replaces (see package docstring)."""
from ..config.model_facts import DLLM_ARCHS

# architecture name -> our model class (dotted path, imported by upstream when the model is built)
MODELS = {arch: model_class for arch, (_, model_class) in DLLM_ARCHS.items()}


def apply(module_map) -> None:
    module_map.CUSTOM_MODULE_MAP.update(MODELS)
