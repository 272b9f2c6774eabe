"""Fixes of upstream's DLLM stopping (``lmdeploy.pytorch.strategies.dllm.model_agent.DLLMStoppingCriteria``)
and of the agent strategy that builds it and runs the unmasker (``DLLMModelAgentStrategy``).

Why:

1. Stop words of different counts in one batch. Upstream pads the batch's stop-word table with -1 and
   marks the block positions it must not check (the prompt's part of the first block) by setting
   their token to -1, so a request with fewer stop words than another "stops" on those positions and
   finishes with no output (found by ``checks/serving_edge_check.py`` on the H100, stock decoding too).
2. A length limit in the same block as an earlier stop word: upstream let the length position win
   (tokens after the stop word were returned; found by a review of upstream's code,
   ``tests/test_upstream_fixes.py`` reproduces it).
3. Chunked prefill: the remaining-token counter and the DLLM mask are inference tensors that upstream
   updates in place (see :mod:`.inputs`).

How: :class:`PaddingSafeDLLMStoppingCriteria` checks stop words with the padding moved to a value no
token takes (the table other consumers read, bad-word masking, is untouched), runs upstream's length
check alone and ends the block at the earlier of the two positions; it updates a writable copy of the
counter. :class:`UpstreamFixesMixin` makes the agent build those criteria and hand the unmasker a
writable mask; every agent strategy of the plugin has it in its bases, ahead of upstream's strategy.

Removed by: distinct stop-word padding upstream, the earlier of the two stop positions, a mask and
counter updated out of place.
"""
import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.strategies.dllm.model_agent import (DLLMModelAgentStrategy, DLLMStoppingCriteria,
                                                          _check_stopwords_dllm)

from .inputs import writable

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
        # upstream updates the counter in place; after a prefill chunk it is an inference tensor
        criteria = type(self)(num_appendable_ids=writable(self.num_appendable_ids),
                              output_start_pos=self.output_start_pos)
        # upstream's length check alone; its stop-word check (below, once) would let the length
        # position win over an earlier stop word of the same block
        upstream_step = super(PaddingSafeDLLMStoppingCriteria, criteria).step
        stopped, len_pos, new = upstream_step(token_ids, None, inputs=inputs, extra_inputs=extra_inputs)
        if stop_words is None:
            return stopped, len_pos, self.wrap(new)
        stop_words = stop_words.masked_fill(stop_words < 0, _NO_TOKEN)
        batch = len_pos.size(0)
        is_unmasked = (extra_inputs.dllm_mask.view(batch, -1) == consts.DLLM_UNMASKED).all(dim=1)
        word_stopped, word_pos, num_appendable = _check_stopwords_dllm(
            token_ids, stop_words, is_unmasked, torch.zeros_like(stopped), len_pos, new.num_appendable_ids,
            output_start_pos=self.output_start_pos, inputs=inputs)
        stop_pos = torch.where(word_stopped, torch.minimum(len_pos, word_pos), len_pos)
        return stopped | word_stopped, stop_pos, type(self)(num_appendable_ids=num_appendable,
                                                            output_start_pos=self.output_start_pos)


class UpstreamFixesMixin:
    """Agent-strategy mixin (before upstream's ``DLLMModelAgentStrategy`` in the bases)."""

    def make_stopping_criteria(self, seqs):
        return PaddingSafeDLLMStoppingCriteria.wrap(super().make_stopping_criteria(seqs))

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        extra_inputs.dllm_mask = writable(extra_inputs.dllm_mask)  # the unmasker updates it in place
        return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)


class FixedDLLMModelAgentStrategy(UpstreamFixesMixin, DLLMModelAgentStrategy):
    """Upstream's DLLM agent strategy with the fixes above (stock decoding through the plugin)."""
