"""Fixes of upstream's DLLM sequences (``lmdeploy.pytorch.strategies.dllm.sequence``: ``SchedulerSequenceDLLM``,
``DLLMSequenceStrategy``): what a request's output holds.

Why:

1. Where an output starts. Upstream's ``output_start_pos`` is the *padded* prompt length, so a stop word
   decoded in the block that holds the end of the prompt was not checked (an EOS right after a prompt
   whose length is not a multiple of L was ignored and text after it returned; found by a review of
   upstream's code, ``tests/test_upstream_fixes.py`` reproduces it).
2. A session's next turn after an abort. When a request is aborted while its current block holds no
   decoded token past the history (right after a commit, or with only masks decoded out of order),
   upstream keeps that half-decoded block in the sequence's token cache and appends the next turn's
   prompt after it: the next prefill forwards the stale block instead of the new prompt.
3. Logprobs: upstream sends a request the logprobs of the ids sampled at all L positions of every step
   that has output, not those of the tokens it returns.

How: :class:`FixedSchedulerSequenceDLLM` drops what follows the history before a new turn's input and
starts the output at the prompt's end; :class:`FixedDLLMSequenceStrategy` builds it and, through
patch 7, sends each token's logprob from the step that unmasked it, with its block
(:mod:`..block_logprobs`).

Removed by: ``output_start_pos`` at the prompt's end, the cache trimmed whenever a new turn starts,
logprobs that know about blocks.
"""
from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy, SchedulerSequenceDLLM

from ..block_logprobs import clear_record, emit_block_logprobs
from ..processor_guard import fail_requests_whose_processors_failed


class FixedSchedulerSequenceDLLM(SchedulerSequenceDLLM):
    """Upstream's DLLM sequence; a new turn's input never lands behind a stale half-decoded block, and
    its output starts where its prompt ends."""

    def _update_token_ids_inputs(self, token_ids, dllm_mask):
        if self.num_valid_ids == self.num_history_ids and len(self.history_cache) > self.num_history_ids:
            # upstream trims the cache only when decoded tokens remain past the history
            self.history_cache.resize(self.num_history_ids)
            self.history_dllm_mask.resize(self.num_history_ids)
        clear_record(self)  # logprob rows of an unfinished block belong to the previous turn
        super()._update_token_ids_inputs(token_ids, dllm_mask)
        self.output_start_pos = self.num_valid_ids  # upstream: the padded prompt length


class FixedDLLMSequenceStrategy(DLLMSequenceStrategy):
    """Upstream's DLLM sequence strategy building :class:`FixedSchedulerSequenceDLLM`."""

    def prepare_step_outputs(self, batched_outputs, running, model_inputs, delta) -> None:
        """Called (patch 7) before the engine loop turns a step's outputs into responses."""
        fail_requests_whose_processors_failed(running)  # stopped here, they get no output of this step
        emit_block_logprobs(batched_outputs, running, model_inputs, self.block_size)

    def make_sequence(self, *args, **kwargs):
        seq = super().make_sequence(*args, **kwargs)
        # same dataclass, no new fields: re-classing keeps upstream's construction (not copied here)
        seq.__class__ = FixedSchedulerSequenceDLLM
        return seq
