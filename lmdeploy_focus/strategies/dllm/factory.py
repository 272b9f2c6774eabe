"""The DLLM strategy factory the engine and the model agent get once the plugin is active."""
from lmdeploy.pytorch.strategies.dllm import DLLMStrategyFactory

from ...config.compat import (check_block_fits_page, check_block_length, check_focus_tiles,
                              check_full_attention, check_unmasking_settings)
from ...config.options import FocusOptions
from ...debug_hooks import wrap_agent_strategy
from ...log import logger
from ...models.step_state.focus_state import decode_per_step
from .focus_config import focus_config


class FocusDLLMStrategyFactory(DLLMStrategyFactory):
    """Reads the FOCUS options from ``hf_config`` and builds the matching strategies.

    With every option off it builds upstream's strategies, the agent, sampling and sequence strategies
    with fixes of upstream defects (:mod:`.upstream_fixes`). With delayed cache on, the
    step inputs, the agent strategy and the model share one :class:`DelayedCacheRuntime`.
    """

    def __init__(self, model_config, dllm_config):
        given_block_length = dllm_config.block_length
        # again here: a config whose fields were set after construction (lmdeploy chat's build_pipe) skipped
        # PytorchEngineConfig's own checks (a block length of 0 divides by zero once requests are scheduled)
        if given_block_length is not None:
            check_block_length(given_block_length)
        check_unmasking_settings(dllm_config.denoising_steps, dllm_config.confidence_threshold)
        model_block_length = model_config.dllm_block_length  # before upstream overwrites it with the given one
        super().__init__(model_config, dllm_config)
        if given_block_length is None and model_block_length is not None:
            logger.info(f'dllm_block_length not given: using {self.dllm_block_length} from the model config / path.')
        elif given_block_length is None:
            # an SDAR names its block length only in its folder name: a download renamed (--local-dir ./sdar) loses
            # it, and the model then decodes (and FOCUS sizes its steps) at upstream's fallback
            logger.warning(f'dllm_block_length: not given and not known from the model (SDAR names it in its folder, '
                           f'e.g. SDAR-8B-Chat-b32): decoding at the fallback {self.dllm_block_length}. Pass '
                           f'--dllm-block-length N with the block length the model was trained with.')
        elif given_block_length is not None and model_block_length is not None and given_block_length != model_block_length:
            # allowed (the same weights can be run at another block length), but a DLLM decodes well only
            # at the block length it was trained with
            logger.warning(f'dllm_block_length={given_block_length} differs from the model\'s {model_block_length} '
                           f'(its config / -b<N> path): decoding at another block length than the model was '
                           f'trained with usually loses quality. Drop --dllm-block-length to use the model\'s.')
        self.focus_options = FocusOptions.from_hf_config(model_config.hf_config).resolved()
        options = self.focus_options
        ignored = options.ignored()
        if ignored:
            logger.warning(f'FOCUS options given but not used by this engine: {", ".join(ignored)}.')
        self.run_stats = None
        if options.track:
            from .run_stats import RunStats
            self.run_stats = RunStats()
        self.delayed_cache_runtime = None
        if options.enable_delayed_cache:
            check_full_attention(getattr(model_config, 'sliding_window', None))
            from .delayed_cache_runtime import DelayedCacheRuntime
            focus = focus_config(options)
            if focus is not None:
                num_layers = getattr(model_config, 'num_layers', None)
                if num_layers is not None and num_layers <= focus.eviction_layer:
                    raise ValueError(f'dllm_enable_focus needs a model with at least {focus.eviction_layer + 1} '
                                     f'layers (importance at layers 0-1, eviction inside layer 1); this one has '
                                     f'{num_layers}.')
            self.delayed_cache_runtime = DelayedCacheRuntime(block_length=self.dllm_block_length,
                                                             commit_mode=options.delayed_cache_commit,
                                                             focus=focus,
                                                             decode_per_step=decode_per_step(self.dllm_config),
                                                             stats=self.run_stats,
                                                             stock_step_rows=options.stock_step_rows)
            from ...models import tp_layout_check
            tp_layout_check.requested()  # a bad $LMDEPLOY_FOCUS_CHECK_TP_LAYOUT fails here, not in a decode step
            from .phase_timer import PhaseTimer, phase_timing_requested
            if phase_timing_requested():
                self.delayed_cache_runtime.timer = PhaseTimer()
                logger.warning('LMDEPLOY_FOCUS_PHASE_TIMING=1: one extra host sync per decode step (profiling).')
            logger.info(f'delayed cache on (commit mode {options.delayed_cache_commit}).')
            most = options.stock_step_rows // self.dllm_block_length
            if most:
                logger.info(f'decode batches of at most {options.stock_step_rows} block rows ({most} sequences; with '
                            f'CUDA graphs rounded down to a capture size) run stock steps (--dllm-stock-step-rows; 0 '
                            f'turns them off).')
            if focus is not None:
                alpha = (f'auto (start {focus.alpha}, one shadow step in {focus.shadow_every} per sequence)'
                         if focus.auto is not None else focus.alpha)
                logger.info(f'FOCUS on: alpha {alpha}, policy {focus.policy}'
                            f'{", shadow (nothing evicted)" if focus.shadow else ""}.')

    def build_engine_strategy(self, cache_config, scheduler_config):
        if self.focus_options.uses_sparse_decode:
            # The block length may only be known here (model default or path suffix).
            check_block_fits_page(self.dllm_block_length, cache_config.block_size)
            if self.focus_options.enable_focus:
                model = self.model_config  # the heads the importance kernel tiles
                check_focus_tiles(self.dllm_block_length, getattr(model, 'k_head_dim', None) or model.head_dim,
                                  model.dtype)
            rows = self.focus_options.stock_step_rows
            if rows and cache_config.max_batches * self.dllm_block_length <= rows:
                logger.warning(f'every decode batch of this engine (max_batch_size {cache_config.max_batches}, block '
                               f'length {self.dllm_block_length}) fits --dllm-stock-step-rows {rows}: all its decode '
                               f'steps run as stock steps, without delayed cache or FOCUS. Set --dllm-stock-step-rows 0 '
                               f'(or lower) to run them at every batch size.')
        return super().build_engine_strategy(cache_config, scheduler_config)

    def build_model_agent_strategy(self):
        # debug hooks of other installed packages, e.g. the step recorder (LMDEPLOY_FOCUS_RECORD_STEPS=<dir>)
        return wrap_agent_strategy(self._build_agent_strategy())

    def _build_agent_strategy(self):
        if self.delayed_cache_runtime is None:
            if self.run_stats is not None:
                from .tracking_agent import TrackingDLLMAgentStrategy
                return TrackingDLLMAgentStrategy(dllm_config=self.dllm_config,
                                                 dllm_mask_token=self.model_config.dllm_mask_token,
                                                 stats=self.run_stats)
            from .upstream_fixes import FixedDLLMModelAgentStrategy
            return FixedDLLMModelAgentStrategy(dllm_config=self.dllm_config,
                                               dllm_mask_token=self.model_config.dllm_mask_token)
        from .delayed_cache_agent import DelayedCacheAgentStrategy
        return DelayedCacheAgentStrategy(dllm_config=self.dllm_config,
                                         dllm_mask_token=self.model_config.dllm_mask_token,
                                         runtime=self.delayed_cache_runtime)

    def build_sampling_strategy(self):
        from .upstream_fixes import FixedDLLMSamplingStrategy
        upstream = super().build_sampling_strategy()  # upstream picks the pad token
        return FixedDLLMSamplingStrategy(upstream.pad_token_id, upstream.dllm_block_length,
                                         mask_token=self.model_config.dllm_mask_token)

    def build_sequence_strategy(self):
        if self.run_stats is None:
            from .upstream_fixes import FixedDLLMSequenceStrategy
            return FixedDLLMSequenceStrategy(block_size=self.dllm_block_length,
                                             dllm_mask_token=self.model_config.dllm_mask_token)
        from .request_stats import TrackingDLLMSequenceStrategy
        return TrackingDLLMSequenceStrategy(block_size=self.dllm_block_length,
                                            dllm_mask_token=self.model_config.dllm_mask_token)

    def build_step_inputs(self):
        if self.delayed_cache_runtime is None:
            from .upstream_fixes import FixedDLLMStepInputs
            return FixedDLLMStepInputs(_block_size=self.dllm_block_length,
                                       _dllm_mask_token=self.model_config.dllm_mask_token)
        from .delayed_cache_step_inputs import DelayedCacheStepInputs
        step_inputs = DelayedCacheStepInputs(_block_size=self.dllm_block_length,
                                             _dllm_mask_token=self.model_config.dllm_mask_token)
        focus = self.delayed_cache_runtime.focus
        step_inputs.tracks_focus = focus is not None
        step_inputs.stock_rule = self.delayed_cache_runtime.stock_batch
        if focus is not None and focus.auto is not None:
            step_inputs.shadow_period = focus.shadow_every
        # A rebuilt step-input object (engine reset) starts with no sequences and no step in flight.
        self.delayed_cache_runtime.step_inputs = step_inputs
        self.delayed_cache_runtime.end_step()
        return step_inputs
