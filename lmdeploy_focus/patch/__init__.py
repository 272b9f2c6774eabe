"""Every place where lmdeploy-focus touches upstream LMDeploy 0.18.0.

The plugin is built by subclassing and registering; these are the few places where something
upstream has to be re-pointed. Each is applied when its upstream module finishes loading (see
:mod:`lmdeploy_focus._bootstrap`), only on exactly lmdeploy 0.18.0, and each has a contract test in
``tests/test_patch_contracts.py`` (patch 19's in ``tests/test_dllm_batch_cap.py``) that fails loudly if upstream
changes shape. A patch that raises while
being applied is logged and recorded (:func:`patch_failures`); delayed cache / FOCUS are then refused at
config time instead of running on a partly stock engine.

1. ``lmdeploy.messages.PytorchEngineConfig`` -> :class:`lmdeploy_focus.config.engine_config.PytorchEngineConfig`
   (:mod:`.engine_config`).
   Why: users pass ``PytorchEngineConfig(dllm_enable_focus=..., ...)`` as with the reference fork.
   How: the module attribute is rebound to a dataclass subclass with one ``dllm_*`` field per row of
   ``config.options.OPTIONS``, which
   carries them to the engine process inside ``hf_overrides['dllm_focus']``; the hook runs before
   ``lmdeploy/__init__`` re-exports the name, so ``lmdeploy.PytorchEngineConfig`` is the subclass too. When a
   plugin module was imported first or on a late activation, every loaded ``lmdeploy`` module that already holds
   the upstream class (``lmdeploy.archs``, ``lmdeploy.pipeline``, the serve engines) is moved to the subclass:
   an upstream-class config cannot be pickled once the name is rebound, and upstream's engine checker pickles it.
   Removed by: upstream fields for delayed cache / FOCUS, or a config-extension registry.

2. ``lmdeploy.pytorch.strategies.dllm.DLLMStrategyFactory`` -> our factory subclass
   (:mod:`.strategy_factory`).
   Why: the device-side delayed-cache / FOCUS decode state lives in strategy subclasses, and the
   factory is the only way the engine and the model agent obtain strategies.
   How: module attribute swap; ``build_strategy_factory`` imports the name at call time, so both
   call sites (engine and model agent) get the subclass.
   With every FOCUS option off the factory still builds our agent, sampling and sequence strategies:
   upstream's plus the fixes in :mod:`lmdeploy_focus.strategies.dllm.upstream_fixes` (stop-word
   padding, chunked prefill, per-request sampling parameters and logits processors in request-major
   row order, per-position random streams, response_format dropped, penalty / n-gram filter /
   min_new_tokens on the request's own output, where outputs end, next turn after an abort).
   Removed by: a paradigm/strategy-factory registry upstream.

3. ``AutoModelConfigBuilder._sub_classes``: our SDAR builder is placed before upstream's, our LLaDA2
   builder is registered (:mod:`.config_builders`).
   Why: upstream hard-codes SDAR's mask token and never reads the block length; LLaDA2 has no builder.
   How: subclasses auto-register through ``__init_subclass__``; the SDAR one is moved in front of the
   upstream SDAR builder so it wins the first-match lookup.
   Removed by: upstream reading ``mask_token_id`` and a default block length (and a LLaDA2 builder).

4. ``lmdeploy.pytorch.config.ModelConfig.from_pretrained`` is wrapped (:mod:`.model_config`).
   Why: FOCUS options given for a non-DLLM model must be reported and ignored, and refused beside speculative
   decoding (``eagle3`` keeps the DLLM paradigm and would drive the sparse step, ``dflash`` makes the target
   autoregressive); only this point sees the resolved model paradigm, the applied ``hf_overrides`` and the
   speculative method together.
   How: classmethod wrapper that post-processes the returned ``ModelConfig``.
   Removed by: upstream validation of DLLM-only options.

5. CLI: ``SubCliServe.add_parser_api_server``, ``SubCliServe.api_server``,
   ``CLI.add_parser_chat`` and ``CLI.chat`` are wrapped (:mod:`.cli_serve`, :mod:`.cli_chat`).
   Why: the stock ``lmdeploy serve api_server`` / ``lmdeploy chat`` must accept the FOCUS flags;
   and a newcomer's two first mistakes (a model path that does not exist, no CUDA GPU) ended in
   upstream tracebacks (``HFValidationError``, ``AssertionError: Torch not compiled with CUDA``).
   How: after upstream builds a sub-parser, the FOCUS argument group is added to it and its
   ``model_path`` positional gets a type check (:mod:`lmdeploy_focus.cli.preflight`; at parse time,
   because upstream's entry point hands a missing path to the hub client before the runner; an ``owner/name``
   whose ``owner`` is a folder in the working directory and that the hub cache does not hold reads as a mistyped
   path and is refused saying so, also where it was meant as a hub id: run from another folder to fetch it);
   ``api_server`` folds the parsed options into ``args.hf_overrides['dllm_focus']`` before upstream
   builds its ``PytorchEngineConfig``. Both runners first exit with one line when ``--device cuda``
   has no usable GPU (for a model path that is no local folder already as the sub-command's arguments are
   parsed, the parser's ``parse_known_args`` wrapped: upstream's entry point fetches a hub model before the runner) (``chat`` is replaced before ``add_parser_chat`` runs, whose
   ``set_defaults(run=CLI.chat)`` then reads the wrapper). Upstream ``build_pipe`` copies every parsed
   option that is an attribute of ``PytorchEngineConfig``, so ``chat`` needs no option folding.
   ``chat`` also gains ``--temperature``, ``--top-p``, ``--top-k``, ``--repetition-penalty``,
   ``--max-new-tokens`` (:mod:`lmdeploy_focus.cli.sampling`; upstream 0.18's chat has none, issue 15 asks
   that a bad one be one line): each is checked as parsed by the request rules of
   :mod:`lmdeploy_focus.serving.validation` (``lmdeploy chat: error: argument --top-p: must be a number
   in (0, 1], got 7.0``, exit 2); upstream's ``build_gen_config`` copies options named like
   ``GenerationConfig`` fields, and the runner removes the flags left out so upstream's defaults stand.
   Without ``--max-new-tokens`` the runner also has each answer cut to the session's room
   (:mod:`lmdeploy_focus.serving.answer_budget`, applied at patch 10's boundary) instead of refused: chat
   re-sends the whole transcript with upstream's fixed 4096 budget, which a small ``--session-len`` refused
   every turn. And the chat process's ``Pipeline.stream_infer`` reports a failed turn on stderr and takes it
   back out of the transcript (:mod:`lmdeploy_focus.cli.chat_errors`; upstream printed nothing and kept an
   empty answer, so every later turn failed the same way).
   ``chat`` gains serve's ``--cache-block-seq-len`` (the KV page a block length above 64 needs under delayed cache /
   FOCUS; the kernel page follows it). Flags the FOCUS options or the engine config refuse end in one line, exit 2
   (:mod:`lmdeploy_focus.cli.config_errors`): serve's flag folding and upstream's config build inside its runner
   (only a ValueError raised by the config's checks), and in the chat process ``lmdeploy.cli.chat.pipeline`` is
   wrapped to check the config ``build_pipe`` finished (and speculative decoding beside FOCUS) before the engine starts.
   Removed by: upstream flags and upstream checks of the model path, the device and sampling values, and a
   chat loop that prints errors.

6. ``lmdeploy.pytorch.models.module_map.CUSTOM_MODULE_MAP`` gains ``SDARForCausalLM`` ->
   :class:`lmdeploy_focus.models.sdar.DelayedCacheSDARForCausalLM`, ``SDARMoeForCausalLM`` ->
   ``DelayedCacheSDARMoeForCausalLM``, and ``LLaDA2MoeModelLM`` (which upstream lacks) ->
   :class:`lmdeploy_focus.models.llada2.DelayedCacheLLaDA2MoeModelLM` (:mod:`.module_map`).
   Why: the delayed-cache decode step forwards ragged rows and attends through our kernels; LLaDA2
   needs a model class at all.
   How: registry mutation; upstream applies ``CUSTOM_MODULE_MAP`` after ``MODULE_MAP``. With delayed
   cache off the SDAR subclasses are upstream's models unchanged; LLaDA2 is built from upstream's
   SDAR and DeepSeek-MoE modules (contract test: it sets what SDAR's ``__init__`` sets).
   Removed by: a working ``PytorchEngineConfig.custom_module_map`` (dead in 0.18) or upstream delayed
   cache (and an upstream LLaDA2 model).

7. ``lmdeploy.pytorch.engine.engine_loop.EngineLoop._make_infer_outputs`` is wrapped
   (:mod:`.request_metrics`).
   Why: (a) with ``dllm_track`` each request reports its DLLM statistics (decode steps, generated,
   processed rows before/after FOCUS eviction, kept fraction, shadow recall) in its request metrics;
   upstream builds ``RequestMetrics`` inside this method with no extension point. (b) DLLM logprobs:
   upstream hands each request the step's L rows of sampled-id logprobs, read inside this method
   before the sequences update; a diffusion request must get each returned token's logprob from the
   step that unmasked it, once, with its block. (c) A diffusion request whose own logits processor raised
   in the step must fail before the step's outputs become responses, and alone.
   How: before upstream runs, the sequence strategy's ``prepare_step_outputs`` (if it has one: ours)
   stops each request whose processors failed and answers it ``INTERNAL_ENGINE_ERROR``
   (:mod:`lmdeploy_focus.strategies.dllm.processor_guard`; upstream skips a stopped sequence) and
   rewrites ``batched_outputs.logprobs`` on the host (:mod:`lmdeploy_focus.strategies.dllm.block_logprobs`); after it,
   a sequence that carries statistics (only with ``dllm_track``) gets
   :class:`~lmdeploy_focus.strategies.dllm.request_stats.DLLMRequestMetrics` (upstream's fields +
   ``dllm``). The counts arrive with the step's extra outputs (no extra sync).
   Removed by: upstream hooks for strategy-defined request metrics and strategy-defined output
   logprobs (or block-aware DLLM logprobs upstream), and custom logits processors run under a per-request guard.

8. ``lmdeploy.pytorch.engine.logits_process._filter_repetition_ngram_`` is wrapped (:mod:`.ngram_filter`).
   Why: with ``repetition_ngram_size`` on, upstream gathers each row's first stop word, which is the
   -1 padding for a request without stop words (``ignore_eos``, no ``stop_token_ids``) next to one
   with: the gather raises (a device assert on the GPU) and the whole batch's step fails, AR and
   DLLM alike. Upstream has no per-request hook in the logits processor.
   How: module attribute swap (``FusedLogitsProcessor`` looks the function up at call time); rows
   without a stop word get a valid index and an unreachable threshold, so the filter leaves them as
   they are; other rows go through upstream's function unchanged.
   Removed by: upstream skipping rows without a stop word.

9. ``lmdeploy.serve.openai.endpoints.common.validate_request`` is wrapped (:mod:`.serve_validation`),
   9b. ``lmdeploy.serve.openai.errors.create_request_error_response`` (:mod:`.serve_errors`), and
   9c. ``lmdeploy.serve.core.generation_config.build_generation_config`` (:mod:`.serve_gen_config`).
   Why: a bad request must be a 400 naming the field and the allowed range, before it reaches the
   engine (issue 15: ``top_p: 7`` dropped the connection; values upstream does not check, such as
   ``n`` on completions or ``logprobs`` that the completion stream then raises on, went through).
   How: module attribute swaps when the modules finish loading, before the endpoint modules import
   the names; our field rules (:mod:`lmdeploy_focus.serving.validation`) run before upstream's
   validator; a ``FieldError`` turned ``RequestError`` carries ``param``, which 9b puts in the error body.
   9c: ``/v1/messages`` and ``/v1/responses`` pass ``validate_request`` by, check ranges of their own
   (``top_p`` 0 allowed) and catch only ``RequestError`` around ``ChatRunner.prepare``, where
   ``GenerationConfig`` (patch 15) refuses the value: 9c turns that ``FieldError`` into a ``RequestError``, a 400.
   A client's ``session_id`` with a request still in progress is a 400 (``param`` ``session_id``), and upstream's
   validator sees a session manager whose ``has`` reads client ids (it read internal ids: a busy client id passed
   and its mapping raised a 500, a free one equal to an internal id was refused;
   :mod:`lmdeploy_focus.serving.user_sessions`).
   Removed by: upstream validating every sampling field and reporting ``param``; ``SessionManager.has`` over client ids.

10. ``lmdeploy.serve.core.async_engine.AsyncEngine._determine_gen_config``, ``_request_error_from_status``,
    ``free_cache``, ``async_get_ppl`` and ``async_get_logits`` are wrapped (:mod:`.async_engine_validation`).
    Why: the rules that need the templated, tokenised request (empty or whitespace-only input, token
    ids outside the vocabulary or equal to the diffusion mask token, prompt + max_new_tokens beyond the
    session, stop words that are not one token, input logprobs for a diffusion model) belong where
    ``pipeline()``, ``lmdeploy chat`` and the api_server all pass: ``preprocess`` calls this method
    after tokenising, inside its ``RequestError`` handling (the session is removed, the caller gets
    the error). An empty prompt otherwise reached ``Engine._add_message``'s assert and killed the loop.
    Stock requests see these rules too: ``n`` other than 1 is refused (upstream fell back to 1 with a log line and
    answered once); a ``max_new_tokens`` the session cannot hold is refused naming the fix (upstream's engine cut it
    with a warning), except a budget the user did not choose (a ``GenerationConfig`` at its defaults, what
    ``pipeline()`` passes given none; ``lmdeploy chat`` without ``--max-new-tokens``), which is cut to the room left
    (``serving.answer_budget``).
    ``_request_error_from_status`` mapping a request to "engine unavailable" pokes the liveness watch (12).
    ``free_cache`` (``POST /distserve/free_cache``, registered on every api_server) ended any session by its
    small integer id on a Hybrid engine, a running request included, never answered: refused there (400).
    ``async_get_ppl`` / ``async_get_logits`` (``pipeline.get_ppl`` / ``get_logits``) skip ``preprocess``: for a
    diffusion model each is refused saying why (upstream failed on the engine's refusal: ``failed to compute ce_loss``,
    ``'NoneType' object is not subscriptable``).
    How: class attribute wraps. Removed by: upstream input validation in ``preprocess``; the distserve routes
    registered for disaggregated roles only.

11. ``lmdeploy.pytorch.engine.engine.Engine._on_add_message``, ``_on_end_session``, ``end_session``, ``async_loop`` and
    ``get_local_health_status`` are wrapped (:mod:`.engine_guard`).
    Why: the last line of defence: an exception while adding one request must fail that request
    alone, not the engine loop and every request in flight; and a loop that dies anyway must name its
    cause in the health status the api_server reads.
    How: upstream's handler (a per-request loop) is called one request at a time; a request whose call
    raises is answered ``INTERNAL_ENGINE_ERROR``, its queued sequence stopped, the exception logged
    with its session. ``async_loop`` keeps the exception that ended it; the health message appends it.
    ``_on_end_session`` leaves a session alone when the END_SESSION comes from the sender whose request on it was
    just refused as busy while another request is in progress there (the instance ends its session in a
    ``finally`` whatever the reply, and upstream's handler frees a running sequence without answering it);
    ``end_session``, which every other end of a session goes through, first answers a request still in progress
    there CANCEL, as ``stop_session`` does.
    A request the engine cannot serve whatever the caller is refused before upstream's handler runs, so
    the session's other sequences are left alone: a second request on a session whose request is still in
    progress (upstream rewrote the running sequence before raising), a token id outside the vocabulary (the
    embedding's device-side assert ends the process), and for diffusion models output logits
    (decode steps have logits of the masked rows only), a request with no token budget (upstream's
    decode inputs drop its row, shifting every later sequence's) and, on an engine that is not
    prefill/decode-disaggregated, ``preserve_cache`` / ``migration_request`` (kept the session's KV cache for good /
    waited for a migration loop that never starts); for callers of the raw ``Engine`` API
    and multi-turn sessions, which patch 10 does not cover.
    Removed by: upstream isolating per-request failures in the request loop.

12. ``lmdeploy.serve.openai.api_server``: ``create_lifespan_handler`` and ``ServerContext.create_session`` wrapped,
    ``EngineSleepingMiddleware`` and ``EngineHealthMonitor`` replaced by subclasses (:mod:`.api_server_liveness`).
    Why: after the engine loop died, ``/health`` reported the last (12 s old) probe and requests went
    to a dead engine. A watcher (:mod:`lmdeploy_focus.serving.liveness`, 1 s) latches the engine dead
    at the first ``alive: False``, logs the cause; the middleware answers inference routes 503 at once
    and the monitor's snapshot is unhealthy with the cause. The same middleware answers ``/pooling`` 400 for a
    diffusion model (its engine refuses whole-sequence logits; upstream's route made that a bare 500).
    ``create_session``: a client session id mapped by another request after this one's validation (the chat path
    awaits in between; completions and generate do not suspend there) raised ``ValueError``, a 500; now a
    ``RequestError``, which the chat path answers 409.
    How: module globals that ``serve`` / the lifespan handler read at call time; a class attribute wrap.
    Removed by: upstream gating inference routes on engine liveness.

13. ``lmdeploy.serve.core.async_engine``: ``AsyncEngine._build_stat_loggers`` and
    ``lmdeploy.metrics.stats.IterationStats.update_from_output`` are wrapped (:mod:`.serve_metrics`,
    applied when the package ``lmdeploy.serve.core`` finishes loading, right after its
    ``async_engine`` module, whose own slot is patch 10).
    Why: the api_server's Prometheus ``/metrics`` (issue 15) must show the DLLM / FOCUS statistics
    (``lmdeploy:dllm_*``: generated tokens, denoising steps, rows at layers 0-1 and >= 2, FOCUS
    candidates / kept and a per-request kept-fraction histogram, shadow recall in shadow mode). Upstream's
    metrics system has a fixed logger list and stats objects that never see an output's extra fields.
    How: after upstream builds its stat loggers, a :class:`~lmdeploy_focus.serving.metrics.DLLMStatLogger`
    (series in prometheus_client's default registry, which upstream's ``/metrics`` serves; no second
    exporter) joins the list upstream handed to ``metrics_processor``, with metrics and ``dllm_track``
    on. The metrics handler task's ``update_from_output`` additionally stores each output's
    ``req_metrics.dllm`` totals (patch 7) on the request's stats and their growth on the iteration's
    stats, which the logger's ``record_iteration`` / ``record_finish`` read. Nothing runs in the engine.
    Removed by: an upstream stat-logger registry and request metrics with strategy-defined fields.

14. ``lmdeploy.pytorch.backends.cuda.graph_runner.runner.CUDAGraphRunner.reset`` is wrapped
    (:mod:`.graph_runner_reset`).
    Why: delayed-cache / FOCUS decode steps replay the plugin's own CUDA graphs
    (:mod:`lmdeploy_focus.models.step_graphs`), which point at the KV caches and weights. Upstream
    resets its graph runner exactly when those may move (sleep, weight updates, release); a replay
    after that would read freed memory. Upstream's reset does not call into the model.
    How: after upstream's reset, the runner's model drops its step graphs (``reset_step_graphs``); a wake-up's
    decode warm-up captures them again, and without one (a weight update while serving) each batch bucket is
    captured again at its next step, as upstream's runner captures its own (a capture writes no KV).
    Removed by: an upstream model hook in the graph-runner reset.

15. ``lmdeploy.messages.GenerationConfig.__post_init__`` is wrapped (:mod:`.generation_config`; applied
    with patch 1, which owns the module's slot in ``targets.PATCHES``).
    Why: ``GenerationConfig(top_p=7)`` ended in a bare ``AssertionError`` naming nothing, and
    ``repetition_penalty <= 0``, a negative ``max_new_tokens`` or ``random_seed`` passed construction
    unchecked (issue 15: ``pipeline()`` must give a clear error).
    How: before upstream's checks, :func:`lmdeploy_focus.serving.validation.check_construction` (the
    request rules, one source of truth) raises ``FieldError`` (a ``ValueError``, ``param`` = the field).
    ``max_new_tokens`` 0 and ``None`` stay allowed here (upstream builds both internally); a request's
    budget is checked in ``preprocess`` (patch 10), which also answers a config mutated after construction.
    Removed by: upstream raising ``ValueError`` with the field for every sampling value.

16. ``lmdeploy.pytorch.engine.inputs_maker``: ``InputsMakerAsync._make_forward_inputs`` and
    ``build_inputs_maker`` are wrapped (:mod:`.schedule_guard`,
    :mod:`lmdeploy_focus.serving.schedule_guard`).
    Why: the last line of defence, second half (issue 15 item 1): an exception while the next step is
    scheduled and built (prefill / decode admission, model inputs, extra inputs, stopping criteria,
    sampling inputs) ended the engine loop and every request in flight, whoever it came from.
    How: that method is synchronous and nothing of it reaches the executor before it returns, so a
    failed step can be rebuilt. On an exception, each candidate (sequences this attempt admitted, the
    running decode sequences, the active long-context chunk) is rebuilt alone with the same read-only
    builders; one that fails alone is stopped and answered ``INTERNAL_ENGINE_ERROR`` (response marked
    done, so later step outputs keep the error type), the rest of the attempt's admissions return to
    WAITING (upstream's preemption), the decode list keeps its layout (the stopped sequence drops out
    of the step's indices as an aborted one does), and the step is made again. No culprit, SSM prefix
    caching, a KV connector or a disaggregated role: the exception propagates as upstream's does (the
    loop ends, patch 11 names the cause), with a log line saying why. Not covered, by design: a
    failure in the scheduler's admission of a sequence not yet READY (cannot be repeated without its
    side effects), inside the batched forward, or in the sequence update after it (the model agent's
    device state has advanced for the whole batch). ``build_inputs_maker`` hands the maker the engine's
    request manager to answer with.
    Removed by: upstream isolating per-request failures while building a step.

17. ``lmdeploy.pytorch.engine.model_agent.agent.BaseModelAgent.async_sampling_logits`` is wrapped
    (:mod:`.sampling_rows`).
    Why: a delayed-cache / FOCUS step computes logits only for the rows whose slot is still masked
    (issue 14 item 3); upstream's sampler takes one row per block position, so the logits were
    scattered into a persistent ``B*L x V`` buffer and the logits processors, the sampler and the
    unmasker's softmax ran on all ``B*L`` rows (2.5 GB of bf16 logits and ~3 ms per SDAR-8B bs-256
    step). The agent strategy has no hook on the sampling inputs.
    How: before upstream's method runs, the agent strategy's ``sampling_rows(logits, sampling_inputs, logprobs_mode)``
    (ours: :meth:`~lmdeploy_focus.strategies.dllm.delayed_cache_agent.DelayedCacheAgentStrategy.sampling_rows`;
    upstream's strategies have none and are untouched) returns the logits and sampling inputs to use:
    the rows with logits and their gathered per-row inputs, or the dense layout when a request asks
    for logprobs and the engine has a ``logprobs_mode``, or for custom logits processors / response formats. Upstream's processors, sampler and ``post_sampling``
    then run unchanged.
    Removed by: an upstream agent-strategy hook that selects the rows to sample.

18. ``lmdeploy.pytorch.engine.model_agent.agent.BaseModelAgent.async_forward`` is wrapped
    (:mod:`.await_stream`).
    Why: a delayed-cache / FOCUS decode step reads its row counts on the host (its one sync). Reached while
    the previous step's deep layers are still queued on the GPU, that read blocks the thread that runs the
    forward, and with it that thread's asyncio loop (at TP 1 the engine's, which takes requests and sends
    outputs), for most of a step. Upstream's forward is
    synchronous, so there is no await point before it.
    How: before upstream's method, an agent strategy with ``before_forward(inputs)`` is awaited (ours:
    :meth:`~lmdeploy_focus.strategies.dllm.delayed_cache_agent.DelayedCacheAgentStrategy.before_forward`:
    unless ``LMDEPLOY_FOCUS_AWAIT_STREAM=0``, a decode forward first awaits an event the runtime recorded once
    the last step's deep graph was launched, polled from the loop, :mod:`lmdeploy_focus.strategies.dllm.stream_wait`;
    on by default: on the H100 it cut the mean gap between streamed outputs 2.4–4.7x, BENCHMARKS.md). Upstream's strategies have no such method and are untouched.
    Removed by: an upstream agent-strategy hook before the forward, or an asynchronous forward.

19. ``lmdeploy.pytorch.engine.engine.EngineChecker`` -> a function returning upstream's checker (:mod:`.dllm_batch_cap`).
    Why: ``ConfigBuilder.update_engine_config`` lowers ``max_batch_size`` so that a decode step's ``B · L`` rows
    fit ``max_prefill_token_num``, but only for a ``dllm_block_length`` set in the engine config; the block length
    the plugin reads from the model (an SDAR ``-b<N>`` folder, LLaDA2's 32) is known only in the model config, after
    the cap. ``lmdeploy serve api_server JetLM/SDAR-8B-Chat-b32 --focus`` kept the default batch (1024 on an H100):
    decode steps of up to 32,768 rows, CUDA graphs captured for them, where ``--dllm-block-length 32`` gives 256.
    How: ``Engine.__init__`` builds the checker from the local model path and the engine config right after
    ``update_engine_config`` and before the scheduler and cache configs; the function applies upstream's rule with
    the model's block length to that config first, then builds upstream's own checker (a subclass cannot be pickled
    into the spawned process upstream runs the checks in) (:mod:`lmdeploy_focus.config.dllm_batch_cap`).
    Removed by: upstream sizing the batch from the model config's block length.

20. ``lmdeploy.tokenizer.HuggingFaceTokenizer.detokenize_incrementally`` is wrapped (:mod:`.detokenize`).
    Why: for a chunk whose text ends in an unfinished UTF-8 character upstream sends no text and keeps the whole
    chunk pending, and drops what is pending when the request ends. A diffusion model's chunk is a block: a block of
    finished text waited a block longer, and was lost when ``max_tokens`` cut inside a character (every endpoint;
    ``usage`` counted it).
    How: class attribute swap (the ChatGLM subclasses and the ``Tokenizer`` facade reach it through lookup;
    ``GptOssTokenizer`` overrides it with its own parser and is untouched); when upstream holds a chunk back the
    wrapper calls it again without the chunk's last 1–4 ids and sends the longest text that ends on a whole
    character; what waits is what upstream's one-token streaming holds (:mod:`lmdeploy_focus.serving.detokenize`).
    One-id chunks are upstream's.
    Removed by: upstream holding back only the unfinished character's tokens.

Test-only, in the development package (never applied at activation):
``lmdeploy_focus_dev.testing.cpu_backend_selector`` swaps the ops-backend selector so model modules run on CPU.
"""
import importlib
import sys

# The start-up hook imports this package (for .targets) in every Python process of the environment: the
# plugin's config and logging are imported where they are used, not here.
from .targets import PATCHES, PROVIDERS, SUPPORTED_LMDEPLOY_VERSION

_applied: set[str] = set()
_pending: set[str] = set()
_version_ok: bool | None = None


def lmdeploy_version() -> str:
    from lmdeploy.version import __version__
    return __version__


def version_supported() -> bool:
    """Exact-version guard, evaluated once; logs one warning when the plugin stays inactive."""
    global _version_ok
    if _version_ok is None:
        found = lmdeploy_version()
        _version_ok = found == SUPPORTED_LMDEPLOY_VERSION
        if not _version_ok:
            from ..log import logger
            logger.warning(
                'lmdeploy-focus supports lmdeploy==%s only, found %s: FOCUS stays inactive and '
                'stock LMDeploy is used. Install lmdeploy==%s to enable it.', SUPPORTED_LMDEPLOY_VERSION,
                found, SUPPORTED_LMDEPLOY_VERSION)
    return _version_ok


def _initialising(name: str) -> bool:
    module = sys.modules.get(name)
    spec = getattr(module, '__spec__', None)
    return module is not None and getattr(spec, '_initializing', False)


def _apply(target, provider_loaded: bool = False) -> None:
    patch_names, provider = PATCHES[target.__name__]
    if not provider_loaded and _initialising(provider):
        _pending.add(target.__name__)  # the provider is importing the target; finish when it is done
        return
    _applied.add(target.__name__)  # first: a patch that imports its own target must not re-enter
    try:
        for patch_name in (patch_names, ) if isinstance(patch_names, str) else patch_names:
            importlib.import_module(f'{__name__}.{patch_name}').apply(target)
    except Exception as exc:
        from ..config.patch_state import record_failure
        _applied.discard(target.__name__)
        record_failure(target.__name__, exc)
        raise


def on_module_loaded(module) -> None:
    """Apply the patch that belongs to ``module``, or the ones waiting for it (idempotent)."""
    name = module.__name__
    if name in PROVIDERS:
        for target in sorted(_pending):
            if PATCHES[target][1] == name:
                _pending.discard(target)
                _apply(sys.modules[target], provider_loaded=True)
        return
    if name in _applied or name not in PATCHES or not version_supported():
        return
    _apply(module)


def patch_failures() -> dict[str, str]:
    from ..config.patch_state import patch_failures as failures
    return failures()


def applied_patches() -> frozenset[str]:
    return frozenset(_applied)
