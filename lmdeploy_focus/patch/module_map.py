"""Patch 6: ``CUSTOM_MODULE_MAP`` entries for the models lmdeploy-focus replaces (see package docstring)."""

# architecture name -> our model class (dotted path, imported by upstream when the model is built)
MODELS = {
    'SDARForCausalLM': 'lmdeploy_focus.models.sdar.DelayedCacheSDARForCausalLM',
    'SDARMoeForCausalLM': 'lmdeploy_focus.models.sdar.DelayedCacheSDARMoeForCausalLM',
    # not in upstream 0.18 at all: our model (upstream SDAR + DeepSeek MoE modules)
    'LLaDA2MoeModelLM': 'lmdeploy_focus.models.llada2.DelayedCacheLLaDA2MoeModelLM',
}


def apply(module_map) -> None:
    module_map.CUSTOM_MODULE_MAP.update(MODELS)
