"""LMDeploy 0.18 DLLM defects that disturb other requests of a batch or cut outputs wrongly, fixed by
subclassing.

The first two were found by ``benchmark/serving_edge_check.py`` on the H100, in stock decoding too:

1. Stop words of different counts in one batch. Upstream pads the batch's stop-word table with -1 and
   marks the block positions it must not check (the prompt's part of the first block) by setting
   their token to -1, so a request with fewer stop words than another "stops" on those positions and
   finishes with no output. :class:`PaddingSafeDLLMStoppingCriteria` checks with the padding moved to
   a value no token takes; the table other consumers read (bad-word masking) is untouched.
2. Chunked prefill: the last chunk's DLLM mask and the stopping criteria's remaining-token counter
   reach the unmasker and the stop check as inference tensors while inference mode is off, and
   upstream's in-place updates raise (the engine loop dies). Both are cloned first when that is so,
   and so is the sampling delta's ``random_offsets`` that ``DLLMStepInputs.merge_prefill`` /
   ``step_decode`` advance in place (:class:`FixedDLLMStepInputs`; the third place the H100 check hit,
   stock chunked prefill, 2026-11-23 run 3).
3. Per-request sampling parameters of mixed batches. The sampler sees one row per block position,
   request after request (``b * L + p``), and upstream's step updates read the per-request vectors
   that way too, but ``DLLMSamplingStrategy.make_sampling_inputs`` repeats the 1-D ones (temperature,
   top-k/p, min-p, repetition penalty, seeds, offsets, ``min_new_tokens`` counters, n-gram settings)
   position-major (``p * B + b``): in a batch whose requests differ, a greedy request is sampled at
   some positions with a neighbour's temperature and top-k. :class:`FixedDLLMSamplingStrategy`
   reorders them request-major (found by reading the code; ``tests/test_upstream_fixes.py``), and
   repeats each request's custom ``logits_processors`` over its rows (upstream left the list one
   entry per request, so request b's processors edited row b, a position of request b // L).
   ``response_format`` (guided decoding) is dropped with a warning: upstream repeats the formats per
   row but not the per-request session list the grammar matchers are looked up with (IndexError in
   the logits processor, the engine loop's step fails for the whole batch, or another session's
   matcher), and a grammar matcher advances token by token, which parallel unmasking does not do.
   Logprobs: upstream sends a request the logprobs of the ids sampled at all L positions of every
   step that has output, not those of the tokens it returns; :mod:`.block_logprobs` sends each
   token's logprob from the step that unmasked it, with its block (through patch 7).
   It also gives each block position its own random seed: upstream's sampler draws one uniform per
   row from (seed, offset), and all rows of a request shared both, so every position of a block drew
   the same number at each step (inverse-CDF sampling then picks the same quantile everywhere: a step
   samples the whole block from the head, or the whole block from the tail).

4. Where an output ends. Upstream's ``output_start_pos`` is the *padded* prompt length, so a stop
   word decoded in the block that holds the end of the prompt was not checked (an EOS right after a
   prompt whose length is not a multiple of L was ignored and text after it returned); and when the
   length limit falls in the same block as an earlier stop word, the length position won (tokens
   after the stop word returned). :class:`FixedSchedulerSequenceDLLM` starts the output at the
   prompt's end; the criteria here end it at the earlier of the two positions. (Found by a review of upstream's code;
   ``tests/test_upstream_fixes.py`` reproduces both.)

5. A session's next turn after an abort. When a request is aborted while its current block holds no
   decoded token past the history (right after a commit, or with only masks decoded out of order),
   upstream keeps that half-decoded block in the sequence's token cache and appends the next turn's
   prompt after it: the next prefill forwards the stale block instead of the new prompt.
   :class:`FixedSchedulerSequenceDLLM` drops what follows the history first (found by the review).

Removed by: the matching upstream fixes (distinct stop-word padding; a mask made outside inference
mode or updated out of place; ``repeat_interleave`` for the 1-D sampling vectors and the logits
processors, a per-position random stream, guided decoding and logprobs that know about blocks;
``output_start_pos`` at the prompt's end and the earlier of the two stop positions; the cache
trimmed whenever a new turn starts).
"""
from dataclasses import replace

import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.strategies.dllm.model_agent import (DLLMModelAgentStrategy, DLLMStoppingCriteria,
                                                          _check_stopwords_dllm)
from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy, SchedulerSequenceDLLM
from lmdeploy.pytorch.strategies.dllm.step_inputs import DLLMStepInputs

from ...log import logger
from .block_logprobs import clear_record, emit_block_logprobs

# never a token id, and distinct from the -1 upstream writes into ignored positions
_NO_TOKEN = -2


def _writable(tensor):
    """``tensor``, or a normal copy of it when it is an inference tensor and inference mode is off
    (upstream updates it in place next)."""
    if tensor is not None and tensor.is_inference() and not torch.is_inference_mode_enabled():
        return tensor.clone()
    return tensor


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
        criteria = type(self)(num_appendable_ids=_writable(self.num_appendable_ids),
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


def _writable_delta(sampling_delta):
    return replace(sampling_delta, random_offsets=_writable(sampling_delta.random_offsets))


class FixedDLLMStepInputs(DLLMStepInputs):
    """Upstream's decode state, advancing a copy of ``random_offsets`` when it is an inference tensor
    while inference mode is off (``+= 1`` raised there and the engine loop died)."""

    def merge_prefill(self, inputs, extra_inputs, stopping_criteria, sampling_delta, *args, **kwargs):
        return super().merge_prefill(inputs, extra_inputs, stopping_criteria, _writable_delta(sampling_delta),
                                     *args, **kwargs)

    def step_decode(self, model_inputs, extra_inputs, stopping_criteria, sampling_delta, *args, **kwargs):
        return super().step_decode(model_inputs, extra_inputs, stopping_criteria, _writable_delta(sampling_delta),
                                   *args, **kwargs)


class UpstreamFixesMixin:
    """Agent-strategy mixin (before upstream's ``DLLMModelAgentStrategy`` in the bases)."""

    def make_stopping_criteria(self, seqs):
        return PaddingSafeDLLMStoppingCriteria.wrap(super().make_stopping_criteria(seqs))

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        extra_inputs.dllm_mask = _writable(extra_inputs.dllm_mask)  # the unmasker updates it in place
        return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)


class FixedDLLMModelAgentStrategy(UpstreamFixesMixin, DLLMModelAgentStrategy):
    """Upstream's DLLM agent strategy with the fixes above (stock decoding through the plugin)."""


# The per-request vectors upstream repeats over the block (its 2-D tables are already request-major).
PER_REQUEST_VECTORS = ('temperature', 'repetition_penalty', 'top_k', 'top_p', 'min_p', 'random_seeds',
                       'random_offsets', 'num_ignore_eos', 'repetition_ngram_size', 'repetition_ngram_threshold')


# Seed of block position p: the request's seed + p * this (mod 2^32); position 0 keeps the request's seed.
# Distinct Philox keys per position; the step offset (+1 per step, upstream's) stays shared.
POSITION_SEED_STRIDE = 0x9E3779B9


class FixedDLLMSamplingStrategy(DLLMSamplingStrategy):
    """Upstream's DLLM sampling inputs with each request's parameters on its own block rows, and one
    random stream per block position."""

    def make_sampling_inputs(self, seqs):
        out = super().make_sampling_inputs(seqs)
        batch, block = len(seqs), self.dllm_block_length
        for name in PER_REQUEST_VECTORS:
            vector = getattr(out, name, None)
            if vector is not None and vector.dim() == 1:
                # upstream's [L, B] layout -> the rows' [B, L]
                setattr(out, name, vector.view(block, batch).t().reshape(-1))
        if any(seq.sampling_param.response_format is not None for seq in seqs):
            _warn_once(seqs, lambda p: p.response_format is not None, 'response_format is not supported with '
                       'diffusion decoding (grammar matchers follow one token at a time); ignored')
            out.response_formats = (None, ) * len(out.response_formats)
        if out.logits_processors is not None and len(out.logits_processors) == batch and any(out.logits_processors):
            # each row of the request's block gets the request's processors (called once per row per step)
            out.logits_processors = [p for p in out.logits_processors for _ in range(block)]
        if out.random_seeds is not None:
            position = torch.arange(block, dtype=out.random_seeds.dtype).repeat(batch)
            out.random_seeds = (out.random_seeds + position * POSITION_SEED_STRIDE) & 0xffffffff
        return out


def _warn_once(seqs, unsupported, message: str) -> None:
    """One warning per request (sampling inputs are rebuilt every step), naming the sessions."""
    marker = object()
    new = [seq for seq in seqs
           if unsupported(seq.sampling_param) and getattr(seq, _WARNED, marker) is not getattr(seq, 'resp', None)]
    for seq in new:
        # the request's response object (set by the engine): a session's next request warns again
        setattr(seq, _WARNED, getattr(seq, 'resp', None))
    if new:
        logger.warning(f'{message} for sessions {sorted({seq.session.session_id for seq in new})}.')


_WARNED = 'lmdeploy_focus_warned_request'


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
        emit_block_logprobs(batched_outputs, running, model_inputs, self.block_size)

    def make_sequence(self, *args, **kwargs):
        seq = super().make_sequence(*args, **kwargs)
        # same dataclass, no new fields: re-classing keeps upstream's construction (not copied here)
        seq.__class__ = FixedSchedulerSequenceDLLM
        return seq
