"""Two LMDeploy 0.18 DLLM defects that disturb other requests of a batch, fixed by subclassing.

Both were found by ``benchmark/serving_edge_check.py`` on the H100, in stock decoding too:

1. Stop words of different counts in one batch. Upstream pads the batch's stop-word table with -1 and
   marks the block positions it must not check (the prompt's part of the first block) by setting
   their token to -1, so a request with fewer stop words than another "stops" on those positions and
   finishes with no output. :class:`PaddingSafeDLLMStoppingCriteria` checks with the padding moved to
   a value no token takes; the table other consumers read (bad-word masking) is untouched.
2. Chunked prefill: the last chunk's DLLM mask and the stopping criteria's remaining-token counter
   reach the unmasker and the stop check as inference tensors while inference mode is off, and
   upstream's in-place updates raise (the engine loop dies). Both are cloned first when that is so.

Removed by: the matching upstream fixes (distinct stop-word padding; a mask made outside inference
mode or updated out of place).
"""
import torch

from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy, DLLMStoppingCriteria

# never a token id, and distinct from the -1 upstream writes into ignored positions
_NO_TOKEN = -2


class PaddingSafeDLLMStoppingCriteria(DLLMStoppingCriteria):
    """Upstream's criteria with stop-word padding that cannot match an ignored position."""

    @classmethod
    def wrap(cls, criteria: DLLMStoppingCriteria) -> 'PaddingSafeDLLMStoppingCriteria':
        return cls(num_appendable_ids=criteria.num_appendable_ids, output_start_pos=criteria.output_start_pos)

    def clone(self):
        return self.wrap(super().clone())

    def merge(self, other):
        return self.wrap(super().merge(other))

    def update(self, delta):
        return self.wrap(super().update(delta))

    def step(self, token_ids, stop_words, inputs=None, extra_inputs=None):
        if stop_words is not None:
            stop_words = stop_words.masked_fill(stop_words < 0, _NO_TOKEN)
        criteria = self
        if self.num_appendable_ids.is_inference() and not torch.is_inference_mode_enabled():
            # upstream updates the counter in place; after a prefill chunk it is an inference tensor
            criteria = type(self)(num_appendable_ids=self.num_appendable_ids.clone(),
                                  output_start_pos=self.output_start_pos)
        stopped, stop_pos, new = super(PaddingSafeDLLMStoppingCriteria, criteria).step(token_ids, stop_words,
                                                                                      inputs=inputs,
                                                                                      extra_inputs=extra_inputs)
        return stopped, stop_pos, self.wrap(new)


class UpstreamFixesMixin:
    """Agent-strategy mixin (before upstream's ``DLLMModelAgentStrategy`` in the bases)."""

    def make_stopping_criteria(self, seqs):
        return PaddingSafeDLLMStoppingCriteria.wrap(super().make_stopping_criteria(seqs))

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        mask = extra_inputs.dllm_mask
        if mask.is_inference() and not torch.is_inference_mode_enabled():
            extra_inputs.dllm_mask = mask.clone()  # a normal tensor the unmasker may update in place
        return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)


class FixedDLLMModelAgentStrategy(UpstreamFixesMixin, DLLMModelAgentStrategy):
    """Upstream's DLLM agent strategy with the fixes above (stock decoding through the plugin)."""
