"""Upstream modules whose loading triggers a patch (kept import-free: the start-up hook reads it)."""

SUPPORTED_LMDEPLOY_VERSION = '0.18.0'

# upstream module -> (module of lmdeploy_focus.patch that patches it, or a tuple of them applied in order,
# our module that provides the replacement). A provider subclasses the upstream module's classes, so importing the provider first
# loads the upstream module mid-way through the provider; the patch then waits for the provider.
PATCHES = {
    'lmdeploy.messages': (('engine_config', 'generation_config'), 'lmdeploy_focus.config.engine_config'),
    'lmdeploy.pytorch.config': ('model_config', 'lmdeploy_focus.config.model_options'),
    'lmdeploy.pytorch.configurations': ('config_builders', 'lmdeploy_focus.config.builders'),
    'lmdeploy.pytorch.strategies.dllm': ('strategy_factory', 'lmdeploy_focus.strategies.dllm.factory'),
    'lmdeploy.cli.serve': ('cli_serve', 'lmdeploy_focus.cli.flags'),
    'lmdeploy.cli.cli': ('cli_chat', 'lmdeploy_focus.cli.flags'),
    'lmdeploy.pytorch.models.module_map': ('module_map', 'lmdeploy_focus.models'),
    'lmdeploy.pytorch.engine.engine_loop': ('request_metrics', 'lmdeploy_focus.strategies.dllm.request_stats'),
    'lmdeploy.pytorch.engine.logits_process': ('ngram_filter', 'lmdeploy_focus.strategies.ngram_filter'),
    'lmdeploy.serve.openai.endpoints.common': ('serve_validation', 'lmdeploy_focus.serving.boundary'),
    'lmdeploy.serve.openai.errors': ('serve_errors', 'lmdeploy_focus.serving.boundary'),
    'lmdeploy.serve.core.generation_config': ('serve_gen_config', 'lmdeploy_focus.serving.boundary'),
    'lmdeploy.serve.core.async_engine': ('async_engine_validation', 'lmdeploy_focus.serving.boundary'),
    'lmdeploy.pytorch.engine.engine': (('engine_guard', 'dllm_batch_cap'), 'lmdeploy_focus.serving.engine_guard'),
    'lmdeploy.serve.openai.api_server': ('api_server_liveness', 'lmdeploy_focus.serving.liveness'),
    # the package, loaded right after its async_engine module (that module's own slot is patch 10)
    'lmdeploy.serve.core': ('serve_metrics', 'lmdeploy_focus.serving.metrics'),
    'lmdeploy.pytorch.backends.cuda.graph_runner.runner': ('graph_runner_reset', 'lmdeploy_focus.models.sdar'),
    'lmdeploy.pytorch.engine.inputs_maker': ('schedule_guard', 'lmdeploy_focus.serving.schedule_guard'),
    'lmdeploy.pytorch.engine.model_agent.agent': (('sampling_rows', 'await_stream'),
                                                  'lmdeploy_focus.strategies.dllm.delayed_cache_agent'),
    'lmdeploy.tokenizer': ('detokenize', 'lmdeploy_focus.serving.detokenize'),
}

PROVIDERS = frozenset(provider for _, provider in PATCHES.values())

WATCHED_MODULES = tuple(PATCHES) + tuple(sorted(PROVIDERS))
