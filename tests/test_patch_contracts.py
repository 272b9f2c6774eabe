"""Contract tests: the upstream shapes each patch in lmdeploy_focus/patch relies on.

If one of these fails after an lmdeploy upgrade, the matching patch must be revisited before the
version guard (lmdeploy_focus/patch/targets.py) is widened.
"""
import dataclasses
import importlib
import inspect

import pytest

import lmdeploy
from lmdeploy_focus.patch import applied_patches
from lmdeploy_focus.patch.targets import PATCHES, SUPPORTED_LMDEPLOY_VERSION


def test_pinned_version_and_every_patch_applied():
    import lmdeploy.cli.cli  # noqa: F401
    import lmdeploy.cli.serve  # noqa: F401
    import lmdeploy.pytorch.configurations  # noqa: F401
    import lmdeploy.pytorch.models.module_map  # noqa: F401
    import lmdeploy.pytorch.strategies.dllm  # noqa: F401
    import lmdeploy.pytorch.engine.engine_loop  # noqa: F401
    import lmdeploy.pytorch.engine.logits_process  # noqa: F401
    import lmdeploy.pytorch.engine.inputs_maker  # noqa: F401
    import lmdeploy.pytorch.backends.cuda.graph_runner.runner  # noqa: F401
    import lmdeploy.tokenizer  # noqa: F401
    for name in ('lmdeploy.serve.openai.api_server', 'lmdeploy.pytorch.engine.engine'):
        importlib.import_module(name)  # also loads the other serving targets (patches 9-12)
    assert lmdeploy.__version__ == SUPPORTED_LMDEPLOY_VERSION
    assert applied_patches() == frozenset(PATCHES)
    from lmdeploy_focus.patch import patch_failures
    assert patch_failures() == {}


# Classes a patch builds at patch time (subclasses of an upstream class it is handed) whose instances stay in the
# api_server process: uvicorn is given the app object, and the health monitor answers /health there.
PROCESS_LOCAL_CLASSES = {
    'lmdeploy.serve.openai.api_server.EngineHealthMonitor': 'serving.liveness.health_monitor',
    'lmdeploy.serve.openai.api_server.EngineSleepingMiddleware': 'serving.liveness.gate_middleware',
}


def test_every_class_a_patch_puts_into_upstream_pickles_by_name():
    """Upstream pickles objects into other processes (the engine checker on CUDA, the mp engine, executor workers),
    and an instance pickles by its class's name: a class built inside a patch cannot be found there. Patch 19's first
    version (a subclass of EngineChecker made at patch time) failed every CUDA engine start that way. A new
    patch-time class must be picklable or listed in PROCESS_LOCAL_CLASSES with the reason its instances stay put."""
    import pickle
    import sys
    test_pinned_version_and_every_patch_applied()  # every target loaded and patched
    ours = {f'{name}.{attr}': value
            for name, module in list(sys.modules.items()) if name == 'lmdeploy' or name.startswith('lmdeploy.')
            for attr, value in list(vars(module).items())
            if inspect.isclass(value) and (getattr(value, '__module__', None) or '').startswith('lmdeploy_focus')}
    assert len(ours) >= 5  # the patches did put our classes there
    unpicklable = {}
    for where, value in ours.items():
        try:
            assert pickle.loads(pickle.dumps(value)) is value
        except Exception as exc:  # noqa: BLE001  (any failure is the finding)
            unpicklable[where] = f'{type(exc).__name__}: {exc}'
    assert set(unpicklable) == set(PROCESS_LOCAL_CLASSES), unpicklable


# 1. PytorchEngineConfig ----------------------------------------------------------------------------

def test_engine_config_is_a_dataclass_with_the_fields_we_validate():
    from lmdeploy_focus.config.engine_config import _UpstreamPytorchEngineConfig as upstream
    assert dataclasses.is_dataclass(upstream)
    names = {f.name for f in dataclasses.fields(upstream)}
    assert {'hf_overrides', 'quant_policy', 'tp', 'block_size', 'dllm_block_length', 'device_type'} <= names
    assert not names & {'dllm_enable_delayed_cache', 'dllm_enable_focus', 'dllm_focus_alpha', 'dllm_track'}
    assert callable(upstream.__post_init__)


def test_misc_config_forwards_hf_overrides_from_the_engine_config():
    from lmdeploy.pytorch.config import MiscConfig
    cfg = lmdeploy.PytorchEngineConfig(dllm_enable_focus=True)
    assert MiscConfig.from_engine_config(cfg).hf_overrides == cfg.hf_overrides


def test_model_config_applies_dict_overrides_as_new_attributes(sdar_dir):
    from lmdeploy.pytorch.config import ModelConfig
    cfg = ModelConfig.from_pretrained(sdar_dir('SDAR-x'), hf_overrides={'dllm_focus': {'a': 1, 'b': [2]}})
    assert cfg.hf_config.dllm_focus == {'a': 1, 'b': [2]}


# 2. DLLMStrategyFactory ------------------------------------------------------------------------------

def test_build_strategy_factory_imports_the_dllm_factory_at_call_time():
    from lmdeploy.pytorch.strategies import build_strategy_factory
    source = inspect.getsource(build_strategy_factory)
    assert 'from .dllm import DLLMStrategyFactory' in source
    assert "model_paradigm == 'dllm'" in source


def test_dllm_factory_interface():
    from lmdeploy_focus.strategies.dllm.factory import DLLMStrategyFactory as upstream
    assert list(inspect.signature(upstream.__init__).parameters) == ['self', 'model_config', 'dllm_config']
    assert list(inspect.signature(upstream.build_engine_strategy).parameters) == [
        'self', 'cache_config', 'scheduler_config']
    for name in ('build_cudagraph_strategy', 'build_sampling_strategy', 'build_model_inputs_strategy',
                 'build_model_agent_strategy', 'build_sequence_strategy', 'build_step_inputs'):
        assert callable(getattr(upstream, name))


# 3. Config builders -----------------------------------------------------------------------------------

def test_builder_registry_is_a_first_match_list_with_ours_first():
    from lmdeploy.pytorch.configurations.builder import AutoModelConfigBuilder
    from lmdeploy.pytorch.configurations.sdar import SDARModelConfigBuilder

    from lmdeploy_focus.config.builders import FocusSDARModelConfigBuilder, LLaDA2ModelConfigBuilder
    registry = AutoModelConfigBuilder._sub_classes
    assert isinstance(registry, list)
    assert registry.index(FocusSDARModelConfigBuilder) < registry.index(SDARModelConfigBuilder)
    assert LLaDA2ModelConfigBuilder in registry
    assert 'model_path' in inspect.signature(SDARModelConfigBuilder.build).parameters


# 4. ModelConfig.from_pretrained -------------------------------------------------------------------------

def test_from_pretrained_is_wrapped_and_upstream_takes_hf_overrides():
    from lmdeploy.pytorch.config import ModelConfig
    upstream = ModelConfig.from_pretrained.__func__.__lmdeploy_focus_upstream__
    params = inspect.signature(upstream).parameters
    assert {'pretrained_model_name_or_path', 'hf_overrides', 'spec_method'} <= set(params)


# 5. CLI -------------------------------------------------------------------------------------------------

def test_chat_builds_its_pipeline_through_the_module_attribute():
    """Patch 5b checks the engine config build_pipe finished by wrapping ``lmdeploy.cli.chat.pipeline``: build_pipe must
    read that name at call time and pass the config and the speculative config as keywords."""
    import lmdeploy.cli.chat as chat_main
    source = inspect.getsource(chat_main.build_pipe)
    assert callable(chat_main.pipeline) and 'pipe = pipeline(' in source
    assert 'backend_config=' in source and '**kwargs' in source


def test_cli_entry_points_have_the_wrapped_static_methods():
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe
    for cls, names in ((SubCliServe, ('add_parser_api_server', 'api_server', 'add_parsers')),
                       (CLI, ('add_parser_chat', 'chat', 'add_parsers'))):
        for name in names:
            assert isinstance(inspect.getattr_static(cls, name), staticmethod), (cls, name)
    assert SubCliServe.api_server.__wrapped__ is not SubCliServe.api_server


def test_upstream_api_server_forwards_hf_overrides_to_the_engine_config():
    from lmdeploy.cli.serve import SubCliServe
    source = inspect.getsource(SubCliServe.api_server.__wrapped__)
    assert 'from lmdeploy.messages import PytorchEngineConfig' in source
    assert 'hf_overrides=args.hf_overrides' in source


def test_upstream_cli_checks_the_model_path_only_through_the_hub_client():
    # Patch 5's model-path check runs at parse time: upstream's entry point calls get_model() on a
    # path that does not exist before it calls args.run, and add_parser_chat binds the runner by name.
    from lmdeploy.cli import cli, entrypoint, serve
    run_source = inspect.getsource(entrypoint.run)
    assert run_source.index('get_model(args.model_path') < run_source.index('args.run(args)')
    assert 'parser.set_defaults(run=CLI.chat)' in inspect.getsource(cli.CLI.add_parser_chat.__wrapped__)
    assert 'parser.set_defaults(run=SubCliServe.api_server)' in \
        inspect.getsource(serve.SubCliServe.add_parser_api_server.__wrapped__)
    for wrapped in (cli.CLI.add_parser_chat.__wrapped__, serve.SubCliServe.add_parser_api_server.__wrapped__):
        assert "parser.add_argument('model_path'" in inspect.getsource(wrapped)
    # the runners upstream's parsers dispatch to are ours
    assert cli.CLI.chat.__wrapped__ is not cli.CLI.chat


def test_upstream_chat_copies_config_attributes_by_name():
    from lmdeploy.cli import chat
    assert chat.PytorchEngineConfig is lmdeploy.PytorchEngineConfig  # imported after activation
    source = inspect.getsource(chat.build_pipe)
    assert 'hasattr(PytorchEngineConfig, key)' in source and 'setattr(engine_config, key, value)' in source


# 6. CUSTOM_MODULE_MAP ------------------------------------------------------------------------------------

def test_custom_module_map_overrides_the_builtin_sdar_class():
    from lmdeploy.pytorch.models import module_map
    from lmdeploy.pytorch.models.patch import _get_module_map
    assert module_map.CUSTOM_MODULE_MAP['SDARForCausalLM'] == 'lmdeploy_focus.models.sdar.DelayedCacheSDARForCausalLM'
    assert _get_module_map()['SDARForCausalLM'] == 'lmdeploy_focus.models.sdar.DelayedCacheSDARForCausalLM'


def test_sdar_model_interfaces_the_subclass_overrides():
    from lmdeploy.pytorch.models.sdar import SDARAttention, SDARForCausalLM
    params = inspect.signature(SDARForCausalLM.prepare_inputs_for_generation).parameters
    assert list(params) == ['self', 'past_key_values', 'inputs_embeds', 'context']
    assert list(inspect.signature(SDARForCausalLM.__init__).parameters)[:3] == ['self', 'config', 'ctx_mgr']
    # the attention module calls attn_fwd(q, k, v, k_cache, v_cache, attn_metadata, ...)
    assert 'self.attn_fwd(' in inspect.getsource(SDARAttention.forward)


@pytest.mark.parametrize('module, prefix', [('sdar', 'SDAR'), ('sdar_moe', 'SDARMoe')])
def test_sdar_family_module_layout_the_focus_forward_drives(module, prefix):
    """SDARDecoderParts calls these upstream attributes; both SDAR and SDAR-MoE must keep them."""
    from lmdeploy.pytorch.models import module_map
    mod = importlib.import_module(f'lmdeploy.pytorch.models.{module}')
    assert module_map.CUSTOM_MODULE_MAP[f'{prefix}ForCausalLM'] == \
        f'lmdeploy_focus.models.sdar.DelayedCache{prefix}ForCausalLM'
    attention = inspect.getsource(getattr(mod, f'{prefix}Attention'))
    for name in ('self.qkv_proj', 'split_qkv', 'self.q_norm', 'self.k_norm', 'self.apply_rotary_pos_emb',
                 'self.o_proj', 'self.attn_fwd('):
        assert name in attention, name
    layer = inspect.getsource(getattr(mod, f'{prefix}DecoderLayer'))
    for name in ('self.input_layernorm', 'self.post_attention_layernorm', 'self.mlp', 'self.self_attn'):
        assert name in layer, name
    model = inspect.getsource(getattr(mod, f'{prefix}Model'))
    for name in ('self.embed_tokens', 'self.rotary_emb', 'self.norm', 'self.layers'):
        assert name in model, name


def test_llada2_is_registered_and_builds_what_upstream_sdar_init_builds():
    """LLaDA2's layer / model / LM skip upstream SDAR's ``__init__`` (it would allocate a dense MLP
    per layer) but inherit its ``forward``: they must set the same attributes and submodules, or an
    upstream change that adds one the forward reads would break LLaDA2 silently."""
    from lmdeploy.pytorch.models import module_map
    from lmdeploy.pytorch.models.sdar import SDARForCausalLM

    from lmdeploy_focus.models.llada2 import LLaDA2MoeModelLM
    from lmdeploy_focus_dev.testing.llada2_cpu import random_llada2_weights, tiny_llada2_hf_config
    from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar
    from lmdeploy_focus_dev.testing.tiny_model import build_tiny_model
    assert module_map.CUSTOM_MODULE_MAP['LLaDA2MoeModelLM'] == \
        'lmdeploy_focus.models.llada2.DelayedCacheLLaDA2MoeModelLM'
    sdar = build_tiny_sdar(model_cls=SDARForCausalLM).model
    llada2 = build_tiny_model(tiny_llada2_hf_config(), random_llada2_weights, model_cls=LLaDA2MoeModelLM).model
    pairs = [(sdar, llada2), (sdar.model, llada2.model), (sdar.model.layers[0], llada2.model.layers[0]),
             (sdar.model.layers[0], llada2.model.layers[1])]
    for upstream, ours in pairs:
        assert set(vars(upstream)) == set(vars(ours)), type(ours).__name__
        assert set(upstream._modules) == set(ours._modules), type(ours).__name__


def test_deepseek_moe_routing_is_the_llada2_rule():
    """LLaDA2's MoE runs through upstream's DeepseekV2MoE with ``noaux_tc`` routing: the router GEMM
    (fp32 logits), the group-limited selection on biased scores and the unbiased, renormalised,
    scaled weights all happen in the gate (checked numerically in test_llada2_model)."""
    from lmdeploy.pytorch.backends.default.moe_router import DefaultRouterNoauxTCImpl
    from lmdeploy.pytorch.models.deepseek_v2 import DeepseekV2MoE, MoEGate
    gate = inspect.getsource(MoEGate)
    for name in ("'noaux_tc'", 'self.e_score_correction_bias', 'NoauxTCRouter', '_get_moe_router_dtype(config)'):
        assert name in gate, name
    router = inspect.getsource(DefaultRouterNoauxTCImpl)
    for name in ('topk(2, dim=-1)', 'scores.gather(1, topk_idx)', 'self.routed_scaling_factor'):
        assert name in router, name
    moe = inspect.getsource(DeepseekV2MoE.__init__)
    assert 'renormalize=False' in moe and 'config.n_shared_experts' in moe


# 7. per-request DLLM statistics -------------------------------------------------------------------

def test_infer_outputs_builder_is_wrapped_and_builds_request_metrics_per_session():
    from lmdeploy.messages import RequestMetrics
    from lmdeploy.pytorch.engine import engine_loop
    from lmdeploy.pytorch.engine.engine import InferOutput
    method = engine_loop.EngineLoop._make_infer_outputs
    upstream = method.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'batched_outputs', 'running', 'model_inputs',
                                                           'delta']
    source = inspect.getsource(upstream)
    # outputs are keyed by session id and each carries a RequestMetrics built in this method
    assert 'outputs[session_id] = out' in source and 'RequestMetrics(' in source
    assert 'req_metrics' in {f.name for f in dataclasses.fields(InferOutput)}
    # block logprobs (rewritten before upstream runs): read from batched_outputs.logprobs, L rows per
    # request, rows with index -1 skipped, cut at the stop position, before the sequences update
    assert 'logprobs = batched_outputs.logprobs' in source
    assert 'num_decode_tokens = logprobs.indices.shape[0] // batch_size' in source
    assert 'mask = logprobs.indices[start:end][:, 0] >= 0' in source and 'stop_pos >= range_tensor' in source
    assert source.index('__get_logprobs(logprobs') < source.index('self.seq_strategy.update_running(')
    from lmdeploy.pytorch.engine.model_agent.agent import BatchedLogProbs
    assert [f.name for f in dataclasses.fields(BatchedLogProbs)] == ['vals', 'indices']
    assert {'token_timestamp', 'engine_events', 'spec_info', 'cached_tokens'} <= {
        f.name for f in dataclasses.fields(RequestMetrics)}


def test_dllm_sequence_update_reads_extra_outputs_by_attribute():
    from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraOutputs, DLLMModelAgentStrategy
    from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy
    assert 'batched_outputs.extra_outputs.dllm_mask' in inspect.getsource(DLLMSequenceStrategy.update_running)
    assert [f.name for f in dataclasses.fields(DLLMExtraOutputs)] == ['dllm_mask']
    assert 'make_extra_outputs' in vars(DLLMModelAgentStrategy)


# 8. n-gram repetition filter ------------------------------------------------------------------------

def _ngram_case(gen, vocab=40):
    import torch
    """Three rows, each repeating a 2-gram: a stop word, none (upstream's -1 padding), a stop word."""
    rows = []
    for _ in range(3):
        a, b = torch.randint(0, vocab, (2, ), generator=gen).tolist()
        rows.append([a, b] * 6)
    generated = torch.tensor(rows)
    stop_words = torch.tensor([[int(torch.randint(0, vocab, (1, ), generator=gen)), 7], [-1, -1],
                               [int(torch.randint(0, vocab, (1, ), generator=gen)), -1]])
    scores = torch.randn(3, vocab, generator=gen)
    return scores, stop_words, generated, torch.tensor([3, 3, 3])


def test_ngram_filter_is_wrapped_and_looked_up_at_call_time():
    from lmdeploy.pytorch.engine import logits_process
    wrapped = logits_process._filter_repetition_ngram_
    upstream = wrapped.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['scores', 'stop_words', 'generated_ids', 'n', 'threshold',
                                                           'max_n', 'max_ngram_window_size']
    source = inspect.getsource(upstream)
    assert 'stop_words = stop_words[:, 0]' in source  # the column that holds -1 for a request without stop words
    assert '_filter_repetition_ngram_(' in inspect.getsource(logits_process.FusedLogitsProcessor.__call__)


def test_ngram_filter_without_a_stop_word_leaves_the_row_and_disturbs_nobody():
    import torch
    from lmdeploy.pytorch.engine import logits_process
    wrapped = logits_process._filter_repetition_ngram_
    upstream = wrapped.__lmdeploy_focus_upstream__
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    scores, stop_words, generated, threshold = _ngram_case(gen)
    with pytest.raises((RuntimeError, IndexError)):  # upstream: the whole batch's step fails
        upstream(scores.clone(), stop_words, generated, None, threshold, 2, 1024)
    out = wrapped(scores.clone(), stop_words, generated, None, threshold, 2, 1024)
    torch.testing.assert_close(out[1], scores[1])  # no stop word: left as it is
    for row in (0, 2):  # found: only the first stop word stays, at score 0
        stop = int(stop_words[row, 0])
        assert out[row, stop] == 0 and torch.isinf(out[row]).sum() == out.size(1) - 1
    # rows that all have a stop word: exactly upstream's result
    keep = torch.tensor([0, 2])
    expected = upstream(scores[keep].clone(), stop_words[keep], generated[keep], None, threshold[keep], 2, 1024)
    torch.testing.assert_close(wrapped(scores[keep].clone(), stop_words[keep], generated[keep], None, threshold[keep],
                                       2, 1024), expected)


# upstream_fixes.py (subclasses, no patch): the upstream shapes the fixes rely on -------------------------

def test_sampling_fix_covers_every_per_request_vector_upstream_repeats():
    import ast

    from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
    from lmdeploy_focus.strategies.dllm.upstream_fixes import PER_REQUEST_VECTORS
    tree = ast.parse(inspect.getsource(DLLMSamplingStrategy.make_sampling_inputs).strip().replace('\n    ', '\n'))
    names = next(ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], 'id', None) == 'update_attr_names')
    tables = {'bad_words', 'bad_mask', 'stop_words', 'stop_mask', 'all_ids'}  # 2-D: repeated request-major
    assert set(names) - tables == set(PER_REQUEST_VECTORS)
    assert 'logits_processors' not in names  # left one entry per request (the fix repeats it per row)
    assert 'attr[None].repeat(*repeats).flatten(0, 1)' in inspect.getsource(DLLMSamplingStrategy.make_sampling_inputs)


def test_sequence_fix_complements_upstreams_cache_trim():
    from lmdeploy.pytorch.strategies.dllm.sequence import SchedulerSequenceDLLM
    source = inspect.getsource(SchedulerSequenceDLLM._update_token_ids_inputs)
    assert 'if num_remain_valid != 0:' in source and 'self.history_cache.resize(self.num_history_ids)' in source
    assert 'self.output_start_pos = self._num_valid_ids + len(token_ids)' in source  # the padded start we replace


def test_stop_fix_calls_upstreams_stop_word_check_with_its_signature():
    """PaddingSafeDLLMStoppingCriteria runs upstream's step for the length limit only and then
    upstream's ``_check_stopwords_dllm`` once, with ``stopped`` all false, to get the stop word's own position."""
    from lmdeploy.pytorch.strategies.dllm import model_agent
    params = list(inspect.signature(model_agent._check_stopwords_dllm).parameters)
    assert params == ['token_ids', 'stop_words', 'is_unmasked', 'stopped', 'stop_pos', 'num_appendable_ids',
                      'output_start_pos', 'inputs']
    step = inspect.getsource(model_agent.DLLMStoppingCriteria.step)
    assert 'if stop_words is not None:' in step and '_check_stopwords_dllm(' in step
    assert 'stop_pos = torch.where(stopped, stop_pos, sw_stop_pos)' in inspect.getsource(model_agent._check_stopwords_dllm)


# 9-12. Serving robustness (issue 15) ----------------------------------------------------------------------

def test_endpoint_handlers_bind_validate_request_and_error_rendering_by_name():
    """Patches 9 / 9b swap module attributes when ``common`` / ``errors`` finish loading; the handlers
    import both names (``from ... import``) after that, and pass ``param`` by keyword."""
    for name in ('lmdeploy.serve.openai.endpoints.completions', 'lmdeploy.serve.openai.endpoints.generate',
                 'lmdeploy.serve.openai.chat_completions.serving'):
        source = inspect.getsource(importlib.import_module(name))
        assert 'validate_request' in source and 'create_request_error_response' in source, name
        module = importlib.import_module(name)
        assert module.validate_request.__lmdeploy_focus_upstream__ is not None
    common = importlib.import_module('lmdeploy.serve.openai.endpoints.common')
    upstream = common.validate_request.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters)[:3] == ['request', 'server_context', 'request_validator']
    errors = importlib.import_module('lmdeploy.serve.openai.errors')
    sig = inspect.signature(errors.create_request_error_response.__lmdeploy_focus_upstream__)
    assert list(sig.parameters) == ['error', 'param'] and sig.parameters['param'].kind is inspect.Parameter.KEYWORD_ONLY


def test_chat_runner_endpoints_bind_build_generation_config_by_name_and_catch_request_error():
    """Patch 9c swaps ``build_generation_config`` when its module finishes loading; ChatRunner and the Responses
    request import the name after that, and the endpoints calling ``ChatRunner.prepare`` catch ``RequestError``."""
    gen = importlib.import_module('lmdeploy.serve.core.generation_config')
    upstream = gen.build_generation_config.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters)[:2] == ['request', 'default_gen_config']
    for name in ('lmdeploy.serve.core.chat_runner', 'lmdeploy.serve.openai.responses.request'):
        assert importlib.import_module(name).build_generation_config is gen.build_generation_config, name
    for name in ('lmdeploy.serve.anthropic.endpoints.messages', 'lmdeploy.serve.openai.responses.serving'):
        source = inspect.getsource(importlib.import_module(name))
        assert 'ChatRunner.prepare(' in source and 'except RequestError' in source, name


def test_preprocess_calls_determine_gen_config_inside_its_request_error_handling():
    """Patch 10: our checks raise ``RequestError`` from ``_determine_gen_config``, which ``preprocess``
    calls after tokenising, inside the ``try`` whose ``except RequestError`` removes the session."""
    ae = importlib.import_module('lmdeploy.serve.core.async_engine')
    source = inspect.getsource(ae.AsyncEngine.preprocess)
    call = source.index('self._determine_gen_config(input_ids, gen_config=gen_config)')
    assert source.index('try:') < call < source.index('except RequestError:')
    upstream = ae.AsyncEngine._determine_gen_config.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'input_ids', 'gen_config']
    assert 'ENGINE_STOP_ERROR' in inspect.getsource(ae.AsyncEngine._request_error_from_status.__lmdeploy_focus_upstream__)


def test_free_cache_is_the_distserve_routes_way_to_end_a_session():
    """Patch 10 refuses ``AsyncEngine.free_cache`` on a Hybrid engine: upstream's is ``(self, session_id)``, ends the
    engine session directly, and the ``/distserve/free_cache`` route (registered on every server) calls it."""
    ae = importlib.import_module('lmdeploy.serve.core.async_engine')
    upstream = ae.AsyncEngine.free_cache.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'session_id']
    assert 'self.engine.end_session(session_id)' in inspect.getsource(upstream)
    route = inspect.getsource(importlib.import_module('lmdeploy.serve.openai.endpoints.distserve'))
    assert 'async_engine.free_cache(session_id)' in route
    # async_get_ppl (pipeline.get_ppl) asks return_ppl without preprocess, so patch 10 refuses it for a DLLM itself
    for name, asks in (('async_get_ppl', 'return_ppl=True'), ('async_get_logits', "output_logits='all'")):
        upstream = getattr(ae.AsyncEngine, name).__lmdeploy_focus_upstream__
        assert asks in inspect.getsource(upstream) and 'preprocess' not in inspect.getsource(upstream), name
        assert inspect.iscoroutinefunction(upstream), name  # the wrapper awaits it


def test_ending_a_session_goes_through_engine_end_session():
    """Patch 11 answers a request in progress before ``Engine.end_session`` frees its session: upstream's
    END_SESSION handler ends a session through that method, and ``RequestManager.reject_request`` answers CANCEL."""
    engine = importlib.import_module('lmdeploy.pytorch.engine.engine')
    request = importlib.import_module('lmdeploy.pytorch.engine.request')
    upstream = engine.Engine.end_session.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'session_id']
    assert 'self.end_session(session_id)' in inspect.getsource(engine.Engine._on_end_session.__lmdeploy_focus_upstream__)
    source = inspect.getsource(request.RequestManager.reject_request)
    assert 'resp.type = ResponseType.CANCEL' in source and 'resp.is_done = True' in source


def test_client_session_ids_are_checked_by_the_validators_through_the_server_context():
    """Patch 9 hands upstream's validators a server context whose ``session_manager.has`` reads client ids; patch 12
    turns the mapping's ValueError into a 409: the validators read the manager from the context they are given, the
    manager keeps client ids in ``user_session_id_map`` and raises ValueError for one already mapped."""
    sm = importlib.import_module('lmdeploy.serve.managers.session_manager')
    assert 'raise ValueError' in inspect.getsource(sm.SessionManager.map_user_session_id)
    assert 'user_session_id_map' in inspect.getsource(sm.SessionManager.__init__)
    for module, function in (('lmdeploy.serve.openai.chat_completions.validation', 'check_request'),
                             ('lmdeploy.serve.openai.endpoints.completions', 'check_request'),
                             ('lmdeploy.serve.openai.endpoints.generate', 'check_request')):
        source = inspect.getsource(getattr(importlib.import_module(module), function))
        assert 'session_manager = server_context.session_manager' in source, module
        assert 'session_manager.has(request.session_id)' in source, module
    api_server = importlib.import_module('lmdeploy.serve.openai.api_server')
    upstream = api_server.ServerContext.create_session.__lmdeploy_focus_upstream__
    assert 'map_user_session_id(user_session_id)' in inspect.getsource(upstream)


def test_a_steps_sequence_list_goes_from_its_sampling_inputs_to_its_outputs_unchanged():
    """The processor guard (strategies/dllm/processor_guard.py) knows a step by ``id()`` of its sequence list: the one
    ``make_sampling_inputs`` gets must be the one patch 7 is handed with the step's outputs. Upstream: the payload
    builder passes ``result.running`` to both, the sender returns the popped list, the main loop hands it to the
    output handler, which passes it on to ``_make_infer_outputs``."""
    maker = importlib.import_module('lmdeploy.pytorch.engine.inputs_maker')
    loop = importlib.import_module('lmdeploy.pytorch.engine.engine_loop')
    payload = inspect.getsource(next(c for c in vars(maker).values() if inspect.isclass(c) and '_build_payload' in vars(c))
                                ._build_payload)
    assert 'make_sampling_inputs(result.running)' in payload and 'running=result.running' in payload
    send = inspect.getsource(maker.InputsMakerAsync._send_next_inputs_impl)
    assert "next_running = forward_inputs.pop('running')" in send and 'return forward_inputs, next_running' in send
    main = inspect.getsource(loop.EngineLoop.main_loop)
    assert 'running=next_running' in main
    outputs = inspect.getsource(loop.EngineLoop._main_loop_get_outputs)
    assert 'self._finish_forward_output(out, running, model_inputs, delta)' in outputs
    finish = inspect.getsource(loop.EngineLoop._finish_forward_output)
    assert 'self._make_infer_outputs(out, running=running' in finish


def test_chat_drops_a_turn_interrupted_while_streaming():
    """Patch 5b's error report raises KeyboardInterrupt from ``Pipeline.stream_infer`` in the chat process: upstream's
    chat loop iterates the stream inside a ``try`` whose ``except KeyboardInterrupt`` aborts the request and pops the
    user's message; ``stream_infer`` is a method the wrapper can replace on the class."""
    chat = importlib.import_module('lmdeploy.cli.chat')
    source = inspect.getsource(chat.main)
    loop = source.index('for resp in resps:')
    handler = source.index('except KeyboardInterrupt:', loop)
    assert source.index('try:', source.index('resps = pipe.stream_infer(')) < loop < handler
    assert source.index('request_session.abort()', handler) < source.index('messages.pop()', handler)
    pipeline = importlib.import_module('lmdeploy.pipeline')
    assert 'stream_infer' in vars(pipeline.Pipeline)
    assert 'error_message' in {f.name for f in __import__('dataclasses').fields(importlib.import_module(
        'lmdeploy.messages').Response)}


def test_engine_add_message_is_a_per_request_loop_bound_at_construction():
    """Patch 11 calls upstream's handler one request at a time: upstream's is a per-request loop, bound
    to the request manager as ``self._on_add_message`` (looked up on the class at construction)."""
    engine = importlib.import_module('lmdeploy.pytorch.engine.engine')
    upstream = engine.Engine._on_add_message.__lmdeploy_focus_upstream__
    assert 'for req in reqs:' in inspect.getsource(upstream)
    assert 'for req in reqs:' in inspect.getsource(engine.Engine._add_message)
    assert 'self._on_add_message' in inspect.getsource(engine.Engine._bind_request_manager)
    assert "'Empty input is not allowed.'" in inspect.getsource(engine.Engine._add_message)
    assert "alive=False" in inspect.getsource(engine.Engine.get_local_health_status.__lmdeploy_focus_upstream__)


def test_a_refused_callers_end_session_would_end_the_session_under_a_running_request():
    """Why patch 11 also wraps ``_on_end_session``: the instance ends its session in a ``finally`` whatever the reply,
    and upstream's handler ends a session (freeing a running sequence) without answering its request; it is bound
    as ``self._on_end_session`` at construction and handles a list of requests."""
    engine = importlib.import_module('lmdeploy.pytorch.engine.engine')
    instance = importlib.import_module('lmdeploy.pytorch.engine.engine_instance')
    source = inspect.getsource(instance.EngineInstance.async_stream_infer)
    assert 'finally:' in source and 'await self.async_end(session_id)' in source.split('finally:')[-1]
    upstream = inspect.getsource(engine.Engine._on_end_session.__lmdeploy_focus_upstream__)
    assert 'for req in reqs:' in upstream and 'self.end_session(session_id)' in upstream
    assert 'reject_request' not in upstream
    assert 'self._on_end_session' in inspect.getsource(engine.Engine._bind_request_manager)
    from lmdeploy.pytorch.engine.request import Request
    assert 'sender_id' in {f.name for f in dataclasses.fields(Request)}


def test_api_server_looks_up_middleware_monitor_and_lifespan_at_call_time():
    """Patch 12 rebinds three module globals of ``api_server``; ``serve`` and the lifespan handler read
    them when they run."""
    api_server = importlib.import_module('lmdeploy.serve.openai.api_server')
    serve_source = inspect.getsource(api_server.serve)
    assert 'app.add_middleware(EngineSleepingMiddleware' in serve_source
    assert 'create_lifespan_handler(backend_config' in serve_source
    assert 'EngineHealthMonitor(async_engine)' in inspect.getsource(
        api_server.create_lifespan_handler.__lmdeploy_focus_upstream__)
    middleware = api_server.EngineSleepingMiddleware.__lmdeploy_focus_upstream__
    assert ('POST', '/v1/completions') in middleware.DEFAULT_PROTECTED_INFERENCE_ROUTES
    assert callable(api_server.EngineHealthMonitor.__lmdeploy_focus_upstream__.snapshot)


# 13. DLLM series on /metrics -----------------------------------------------------------------------------

def test_serve_core_package_loads_async_engine_before_it_finishes():
    """Patch 13 is keyed on the package: by then its ``async_engine`` module (patch 10's slot) is loaded."""
    core = importlib.import_module('lmdeploy.serve.core')
    assert core.AsyncEngine is core.async_engine.AsyncEngine
    from lmdeploy.metrics.stats import IterationStats
    assert core.async_engine.IterationStats is IterationStats


def test_stat_loggers_list_is_shared_with_the_metrics_processor():
    """Patch 13 appends its logger to ``self.stat_loggers`` after upstream built them: upstream hands the
    metrics processor that very list, and the wrapper reads ``backend``, ``backend_config`` (the engine's,
    with the FOCUS fields) and ``model_name``."""
    from lmdeploy.serve.core.async_engine import AsyncEngine
    wrapped = AsyncEngine._build_stat_loggers
    source = inspect.getsource(wrapped.__lmdeploy_focus_upstream__)
    assert 'metrics_processor.stat_loggers = self.stat_loggers' in source
    assert "getattr(self.backend_config, 'enable_metrics', False)" in source
    assert 'PrometheusStatLogger(model_name=self.model_name' in source and 'dp_rank=dp_rank' in source
    init = inspect.getsource(AsyncEngine.__init__)
    assert 'self.backend = backend' in init and 'self.backend_config = self.engine.engine_config' in init
    assert init.index('self.backend_config = self.engine.engine_config') < init.index('self._build_stat_loggers()')


def test_metrics_handler_reads_each_output_through_update_from_output():
    """Per output: ``generate`` queues (outputs, the request's RequestStats, a fresh IterationStats); the
    handler calls ``update_from_output`` (wrapped) before the loggers' ``record_iteration``, and
    ``record_finish(req_stats)`` on FINISH."""
    from lmdeploy.metrics.loggers import StatLoggerBase
    from lmdeploy.metrics.metrics_processor import metrics_processor
    from lmdeploy.metrics.stats import IterationStats
    from lmdeploy.serve.core.async_engine import AsyncEngine

    from lmdeploy_focus.serving.metrics import DLLMStatLogger
    handler = inspect.getsource(type(metrics_processor)._run_metrics_handler)
    update = handler.index('iteration_stats.update_from_output(outputs, req_stats)')
    assert update < handler.index('stat_logger.record_iteration(iteration_stats)')
    assert update < handler.index('stat_logger.record_finish(req_stats)')
    assert 'outputs.status == ResponseType.FINISH' in handler
    generate = inspect.getsource(AsyncEngine.generate)
    assert generate.index('req_stats = RequestStats(') < generate.index('async for outputs in gen')
    assert 'iteration_stats = IterationStats()' in generate
    assert 'metrics_processor.queue_update((outputs, req_stats, iteration_stats, specdecode_stats))' in generate
    assert callable(IterationStats.update_from_output.__lmdeploy_focus_upstream__)
    assert list(inspect.signature(IterationStats.update_from_output.__lmdeploy_focus_upstream__).parameters) == [
        'self', 'outputs', 'req_stats']
    assert not getattr(DLLMStatLogger, '__abstractmethods__', None)
    assert StatLoggerBase.__abstractmethods__ == {'record_schedule', 'record_iteration', 'record_specdecode'}


def test_metrics_route_serves_the_default_registry_with_the_upstream_labels():
    """``/metrics`` is prometheus_client's default registry (where the DLLM series register); upstream drops
    every collector named 'lmdeploy...' when it builds its logger, and labels by model name and engine."""
    from lmdeploy.metrics.loggers import PrometheusStatLogger
    api_server = importlib.import_module('lmdeploy.serve.openai.api_server')
    mount = inspect.getsource(api_server.mount_metrics)
    assert 'registry = REGISTRY' in mount and 'make_asgi_app(registry=registry)' in mount
    init = inspect.getsource(PrometheusStatLogger.__init__)
    assert "'lmdeploy' in collector._name" in init
    assert "labelnames = ['model_name', 'engine']" in init and 'labelvalues = [model_name, str(dp_rank)]' in init


# 14. CUDAGraphRunner.reset -------------------------------------------------------------------------

def test_graph_runner_reset_also_drops_the_models_step_graphs():
    """Upstream resets its runner when KV caches / weights may move (sleep, weight update, release);
    the plugin's step graphs point at them too, so the wrapped reset must reach the model."""
    import inspect
    from types import SimpleNamespace

    from lmdeploy.pytorch.backends.cuda.graph_runner import runner as runner_module
    wrapped = runner_module.CUDAGraphRunner.reset
    upstream = wrapped.__lmdeploy_focus_upstream__
    # upstream's reset clears its own graphs and never calls into the model
    source = inspect.getsource(upstream)
    assert '_full_graph_runners.clear()' in source and 'self.model' not in source
    from lmdeploy.pytorch.engine.model_agent.agent import BaseModelAgent
    for name in ('sleep', '_finalize_updated_weights', 'release'):  # where caches / weights may move
        assert 'reset_graph_runner()' in inspect.getsource(getattr(BaseModelAgent, name))
    assert 'self.warmup()' in inspect.getsource(BaseModelAgent.wakeup)  # which captures the step graphs again

    def runner(model):  # an instance without __init__ (that needs a CUDA model)
        fake = object.__new__(runner_module.CUDAGraphRunner)
        fake.__dict__.update(_runner_meta=SimpleNamespace(padding_batch_size=4), _full_graph_runners={'k': 1},
                             _piecewise_graph_manager=None, model=model)
        return fake

    calls = []
    fake = runner(SimpleNamespace(reset_step_graphs=lambda: calls.append(1)))
    fake.reset()
    assert fake._full_graph_runners == {} and fake._runner_meta.padding_batch_size is None and calls == [1]
    runner(SimpleNamespace()).reset()  # a model without step graphs


# 5b. chat sampling flags (in patch 5) ------------------------------------------------------------------

def test_upstream_chat_copies_gen_config_fields_by_name_and_has_no_sampling_flags_of_its_own():
    """Our ``--top-p`` & co. reach the session's ``GenerationConfig`` only because upstream's
    ``build_gen_config`` copies every option named like one of its fields (``None`` included: unset
    flags are removed first); and they must not clash with upstream flags of the same name."""
    from lmdeploy.cli import chat, cli
    from lmdeploy.cli.utils import convert_args
    from lmdeploy_focus.cli.sampling import SAMPLING_FLAGS
    source = inspect.getsource(chat.build_gen_config)
    assert 'hasattr(GenerationConfig, key)' in source and 'setattr(gen_config, key, value)' in source
    assert '_get_kwargs()' in inspect.getsource(convert_args)  # the namespace's attributes, deleted ones gone
    upstream_parser_source = inspect.getsource(cli.CLI.add_parser_chat.__wrapped__)
    for dest, (flag, _, _) in SAMPLING_FLAGS.items():
        assert hasattr(lmdeploy.GenerationConfig, dest)
        assert flag not in upstream_parser_source and dest not in upstream_parser_source


# 15. GenerationConfig construction -----------------------------------------------------------------------

def test_generation_config_validates_in_post_init_and_builds_with_none_or_zero_budgets():
    """Patch 15 wraps ``__post_init__`` (the dataclass ``__init__`` looks it up on the class); upstream
    builds configs with ``max_new_tokens=None`` (api_server) and ``0`` (logits scoring), which it must
    keep accepting."""
    from lmdeploy import messages
    from lmdeploy.serve.core import async_engine, generation_config
    cfg = messages.GenerationConfig
    assert dataclasses.is_dataclass(cfg) and '__post_init__' in inspect.getsource(cfg)
    assert cfg.__post_init__.__lmdeploy_focus_upstream__ is not None
    assert 'max_new_tokens=max_new_tokens' in inspect.getsource(generation_config.build_generation_config)
    assert 'max_new_tokens = 1 if self.backend' in inspect.getsource(async_engine.AsyncEngine)
    cfg(max_new_tokens=None), cfg(max_new_tokens=0, output_logits='all', top_k=1)


# 16. scheduling isolation --------------------------------------------------------------------------------

def test_forward_inputs_are_built_synchronously_before_anything_is_sent():
    """Patch 16 rebuilds a failed step: upstream builds the payload in ``_make_forward_inputs`` and only
    then hands it to the executor; the engine loop gets its maker from ``build_inputs_maker`` at call
    time; ``RequestManager.response`` only wakes the waiter; ``_send_resp`` keeps a done response's type;
    decode admission leaves a non-RUNNING sequence out of the step's indices."""
    im = importlib.import_module('lmdeploy.pytorch.engine.inputs_maker')
    el = importlib.import_module('lmdeploy.pytorch.engine.engine_loop')
    from lmdeploy.pytorch.engine.request import RequestManager
    from lmdeploy.pytorch.paging.scheduler import Scheduler
    upstream = im.InputsMakerAsync._make_forward_inputs.__lmdeploy_focus_upstream__
    assert not inspect.iscoroutinefunction(upstream)
    assert list(inspect.signature(upstream).parameters) == ['self', 'prefill', 'enable_empty']
    send = inspect.getsource(im.InputsMakerAsync._send_next_inputs_impl)
    assert send.index('self._make_forward_inputs(') < send.index('self.executor.forward_async(')
    assert im.build_inputs_maker.__lmdeploy_focus_upstream__ is not None
    assert 'from .inputs_maker import build_inputs_maker' in inspect.getsource(el.build_engine_loop)
    assert inspect.getsource(RequestManager.response).strip().endswith('resp.event.set()')
    assert 'elif out.resp.is_done:' in inspect.getsource(el.EngineLoop._send_resp)
    assert 'if seq.status != MessageStatus.RUNNING:' in inspect.getsource(Scheduler.schedule_running)
    for name in ('_ssm_prefix_cache_enabled', 'create_model_inputs', 'running_seqs', 'long_context_chunker'):
        assert name in inspect.getsource(im.InputsMakerAsync)
    assert 'def preempt_seqs' in inspect.getsource(Scheduler)


# 17. BaseModelAgent.async_sampling_logits --------------------------------------------------------------

def test_sampling_runs_on_the_rows_the_agent_strategy_picks():
    """Upstream's sampler sees the logits and sampling inputs it is given, and hands the same logits to
    the strategy's post_sampling; the wrapper lets a strategy with ``sampling_rows`` pick them, and
    leaves a strategy without it (upstream's own) alone. Runs upstream's real method on CPU."""
    import asyncio
    import inspect
    from types import SimpleNamespace

    import torch
    from lmdeploy.pytorch.engine.logits_process import SamplingInputs
    from lmdeploy.pytorch.engine.model_agent.agent import BaseModelAgent
    upstream = BaseModelAgent.async_sampling_logits.__lmdeploy_focus_upstream__
    source = inspect.getsource(upstream)
    # the wrapper takes exactly these (an argument upstream added would be a TypeError at every step)
    assert list(inspect.signature(upstream).parameters) == ['self', 'logits', 'inputs', 'extra_inputs',
                                                            'sampling_inputs']
    assert inspect.iscoroutinefunction(upstream)
    # the engine's step calls it positionally with four arguments (agent.py, the forward task)
    assert 'await self.async_sampling_logits(\n            last_logits, inputs, extra_inputs, sampling_inputs)' in (
        inspect.getsource(BaseModelAgent))
    assert 'FusedLogitsProcessor(\n                sampling_inputs,' in source
    assert 'self.agent_strategy.post_sampling(inputs, logits, next_token_ids' in source

    class Strategy:
        def __init__(self, rows):
            self.rows, self.seen = rows, None

        def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
            self.seen = (logits, next_token_ids)
            return next_token_ids, extra_inputs

    class RowStrategy(Strategy):
        def sampling_rows(self, logits, sampling_inputs, logprobs_mode):
            assert logprobs_mode == 'raw_logprobs'  # the engine's, passed on
            return logits[self.rows], SamplingInputs(max_num_logprobs=-1, logits_processors=[None] * len(self.rows),
                                                     batch_size=len(self.rows))

    logits = torch.randn(6, 9)
    for strategy in (RowStrategy(torch.tensor([4, 1])), Strategy(None)):
        agent = object.__new__(BaseModelAgent)  # no model: only what the sampling path reads
        agent.__dict__.update(agent_strategy=strategy, spec_agent=SimpleNamespace(is_enabled=lambda: False),
                              misc_config=SimpleNamespace(logprobs_mode='raw_logprobs'), guided_decoding_manager=None)
        inputs = SamplingInputs(max_num_logprobs=-1, logits_processors=[None] * 6, batch_size=6)
        next_ids, _, _, _ = asyncio.run(agent.async_sampling_logits(logits, None, None, inputs))
        rows = strategy.rows if strategy.rows is not None else torch.arange(6)
        assert torch.equal(next_ids, logits[rows].argmax(-1)) and torch.equal(strategy.seen[0], logits[rows])


# 18. BaseModelAgent.async_forward -----------------------------------------------------------------------

def test_agent_strategy_awaits_before_the_forward():
    """Upstream's async_forward runs the forward synchronously, then yields; the wrapper awaits a strategy's
    ``before_forward(inputs)`` first (the loop runs other tasks while it waits) and leaves a strategy without
    it (upstream's own) alone. Runs upstream's real method with a stand-in ``_forward_impl``."""
    import asyncio
    import inspect

    from lmdeploy.pytorch.engine.model_agent.agent import BaseModelAgent
    upstream = BaseModelAgent.async_forward.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'inputs', 'cache_inputs']
    assert 'output = self._forward_impl(inputs, cache_inputs=cache_inputs)' in inspect.getsource(upstream)
    # the engine's step reaches the forward through this method (else the hook would silently never run)
    assert 'await self.async_forward(inputs, cache_inputs=cache_inputs)' in inspect.getsource(
        BaseModelAgent._async_model_forward)

    events = []

    class Waiting:
        async def before_forward(self, inputs):
            events.append(('before', inputs))
            for _ in range(3):
                await asyncio.sleep(0)
            events.append(('waited', inputs))

    async def neighbour():  # a request task on the same loop
        for i in range(3):
            events.append(('neighbour', i))
            await asyncio.sleep(0)

    for strategy in (Waiting(), object()):
        events.clear()
        agent = object.__new__(BaseModelAgent)
        agent.__dict__.update(agent_strategy=strategy)
        agent._forward_impl = lambda inputs, cache_inputs=None: events.append(('forward', inputs, cache_inputs)) or 'out'

        async def both():
            return (await asyncio.gather(agent.async_forward('in', cache_inputs='ck'), neighbour()))[0]

        assert asyncio.run(both()) == 'out'
        forward = events.index(('forward', 'in', 'ck'))
        if isinstance(strategy, Waiting):
            # the strategy's wait came first, and the neighbour ran while it waited
            assert events[0] == ('before', 'in') and events.index(('waited', 'in')) < forward
            assert any(e[0] == 'neighbour' for e in events[1:events.index(('waited', 'in'))])
        else:
            assert forward == 0 or all(e[0] == 'neighbour' for e in events[:forward])


def test_detokenizer_is_wrapped_and_upstream_still_holds_back_a_chunk_ending_unfinished():
    """Patch 20: the wrapper sits on the class the tokenizers reach it through; upstream's rule it works around (a
    text ending in U+FFFD is held back whole) and the state it rebuilds are still upstream's."""
    from lmdeploy import tokenizer
    wrapped = tokenizer.HuggingFaceTokenizer.detokenize_incrementally
    upstream = wrapped.__lmdeploy_focus_upstream__
    assert list(inspect.signature(upstream).parameters) == ['self', 'all_input_ids', 'state', 'skip_special_tokens',
                                                            'spaces_between_special_tokens']
    assert "not new_text.endswith('\ufffd')" in inspect.getsource(upstream)
    assert [f.name for f in dataclasses.fields(tokenizer.DetokenizeState)] == ['ids_offset', 'prev_tokens',
                                                                               'prefix_offset', 'read_offset']
