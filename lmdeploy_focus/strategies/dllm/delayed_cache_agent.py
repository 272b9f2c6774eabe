"""Agent strategy for delayed-cache decode steps: ragged outputs back to ``B*L``, guarded unmasking."""
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy

from .delayed_cache_runtime import DelayedCacheRuntime
from .processing_set import scatter_processed
from .unmasking_guard import unmask_processed_only


class DelayedCacheAgentStrategy(DLLMModelAgentStrategy):

    def __init__(self, dllm_config, dllm_mask_token: int, runtime: DelayedCacheRuntime):
        super().__init__(dllm_config=dllm_config, dllm_mask_token=dllm_mask_token)
        self.runtime = runtime

    def slice_outputs(self, inputs, seq_length):
        step = self.runtime.step
        if step is not None and not step.hidden_scattered and inputs.dim() == 2 and inputs.size(0) == step.num_rows:
            # The model's hidden states of the processed rows: place them at their block slots
            # (zeros elsewhere; those rows are hidden from the unmasker).
            step.hidden_scattered = True
            dense = scatter_processed(inputs, step.proc, fill=0)
            return dense.reshape(-1, inputs.size(-1))
        return super().slice_outputs(inputs, seq_length)

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        step = self.runtime.step
        if step is None:
            return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)
        input_ids = inputs.input_ids.flatten()
        dllm_mask, next_token_ids = unmask_processed_only(self.unmasking_processor, logits, input_ids, next_token_ids,
                                                          extra_inputs.dllm_mask, step.proc)
        extra_inputs.dllm_mask = dllm_mask
        self.runtime.end_step()
        return next_token_ids, extra_inputs
