"""Agent strategy for delayed-cache (and FOCUS) decode steps: the model's ``B*L`` logits pass through
unsliced, guarded unmasking (slots without fresh logits are never unmasked), then the runtime's bookkeeping."""
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy

from .delayed_cache_runtime import DelayedCacheRuntime
from .request_stats import StepStatsOutputs
from .upstream_fixes import UpstreamFixesMixin
from .unmasking_guard import unmask_processed_only


class DelayedCacheAgentStrategy(StepStatsOutputs, UpstreamFixesMixin, DLLMModelAgentStrategy):

    def __init__(self, dllm_config, dllm_mask_token: int, runtime: DelayedCacheRuntime):
        super().__init__(dllm_config=dllm_config, dllm_mask_token=dllm_mask_token)
        self.runtime = runtime

    def slice_outputs(self, inputs, seq_length):
        step = self.runtime.step
        if step is not None and inputs.dim() == 2 and inputs.size(0) in (step.num_rows,
                                                                         step.batch_size * step.block_length):
            # Hidden states of the deep rows (the model's get_logits runs the LM head on those that
            # need logits and puts them at their B*L slots), or those dense logits: nothing to slice.
            return inputs
        return super().slice_outputs(inputs, seq_length)

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        step = self.runtime.step
        if step is None:
            return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)
        self.runtime.mark_phase('sampling')
        input_ids = inputs.input_ids.flatten()
        input_mask = extra_inputs.dllm_mask
        dllm_mask, next_token_ids = unmask_processed_only(self.unmasking_processor, logits, input_ids, next_token_ids,
                                                          input_mask, step.fresh)
        extra_inputs.dllm_mask = dllm_mask
        self.keep_step_stats(self.runtime.after_unmasking(input_mask, dllm_mask))
        self.runtime.end_step()
        return next_token_ids, extra_inputs
