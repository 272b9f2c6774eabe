"""Stock DLLM decoding with ``dllm_track``: upstream's agent strategy plus run statistics."""
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy

from ...models.step_state.focus_state import DLLM_MASKED, newly_decoded
from .request_stats import StepStatsOutputs
from .upstream_fixes import UpstreamFixesMixin
from .run_stats import RunStats, whole_block_counts


class TrackingDLLMAgentStrategy(StepStatsOutputs, UpstreamFixesMixin, DLLMModelAgentStrategy):
    """Every decode step forwards whole blocks: processed = deep = B*L rows."""

    def __init__(self, dllm_config, dllm_mask_token: int, stats: RunStats):
        super().__init__(dllm_config=dllm_config, dllm_mask_token=dllm_mask_token)
        self.block_length = dllm_config.block_length
        self.stats = stats

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        L = self.block_length
        masked = extra_inputs.dllm_mask.view(-1, L) == DLLM_MASKED  # before upstream's unmasker writes into the mask
        next_token_ids, extra_inputs = super().post_sampling(inputs, logits, next_token_ids, extra_inputs)
        if inputs.is_decoding and not getattr(inputs, 'is_dummy', False):
            rows = whole_block_counts(newly_decoded(masked, extra_inputs.dllm_mask))
            self.stats.add_rows(rows)
            self.keep_step_stats(rows)
        return next_token_ids, extra_inputs
