"""Fix of upstream's DLLM sampling inputs (``lmdeploy.pytorch.strategies.dllm.sampling.DLLMSamplingStrategy``).

Why: per-request sampling parameters of mixed batches. The sampler sees one row per block position, request after
request (``b * L + p``), and upstream's step updates read the per-request vectors that way too, but
``make_sampling_inputs`` repeats the 1-D ones (temperature, top-k/p, min-p, repetition penalty, seeds, offsets,
``min_new_tokens`` counters, n-gram settings) position-major (``p * B + b``): in a batch whose requests differ, a
greedy request is sampled at some positions with a neighbour's temperature and top-k (found by reading the code;
``tests/test_upstream_fixes.py``). Custom ``logits_processors`` stayed one entry per request, so request b's
processors edited row b, a position of request b // L (and one that raises ends the engine loop:
:mod:`..processor_guard`). ``response_format`` (guided decoding): upstream repeats the formats per row but not the
per-request session list the grammar matchers are looked up with (IndexError in the logits processor, the whole
batch's step fails, or another session's matcher), and a grammar matcher advances token by token, which parallel
unmasking does not do. Random streams: the sampler draws one uniform per row from (seed, offset), and all rows of a
request shared both, so every position of a block drew the same number at each step (inverse-CDF sampling then
picks the same quantile everywhere).

How: :class:`FixedDLLMSamplingStrategy` reorders the 1-D vectors request-major, repeats each request's processors
over its rows (upstream's ``logit_bias`` one as a single op per row, :mod:`.logit_bias`; all of them under
:mod:`..processor_guard`), drops ``response_format`` with one warning per request, and gives each block position
its own seed (the request's seed + ``p * POSITION_SEED_STRIDE``). What the rows say about the request's own output
so far (penalty, n-gram filter, ``min_new_tokens``) is fixed in :mod:`.own_history`.

Removed by: ``repeat_interleave`` for the 1-D vectors and the processors, a per-position random stream,
guided decoding that knows about blocks.
"""
import torch
from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy

from ....log import logger
from ..processor_guard import RequestProcessors
from .logit_bias import vectorised
from .own_history import fix_own_history_rows

# The per-request vectors upstream repeats over the block (its 2-D tables are already request-major).
PER_REQUEST_VECTORS = ('temperature', 'repetition_penalty', 'top_k', 'top_p', 'min_p', 'random_seeds',
                       'random_offsets', 'num_ignore_eos', 'repetition_ngram_size', 'repetition_ngram_threshold')


# Seed of block position p: the request's seed + p * this (mod 2^32); position 0 keeps the request's seed.
# Distinct Philox keys per position; the step offset (+1 per step, upstream's) stays shared.
POSITION_SEED_STRIDE = 0x9E3779B9


class FixedDLLMSamplingStrategy(DLLMSamplingStrategy):
    """Upstream's DLLM sampling inputs with each request's parameters on its own block rows, and one
    random stream per block position, and each request's own output history (:mod:`.own_history`)."""

    def __init__(self, pad_token_id: int, dllm_block_length: int, mask_token: int | None = None) -> None:
        super().__init__(pad_token_id, dllm_block_length)
        self.mask_token = mask_token  # pads the history of rows that use the n-gram filter

    def make_sampling_inputs(self, seqs):
        out = super().make_sampling_inputs(seqs)
        batch, block = len(seqs), self.dllm_block_length
        for name in PER_REQUEST_VECTORS:
            vector = getattr(out, name, None)
            if vector is not None and vector.dim() == 1:
                # upstream's [L, B] layout -> the rows' [B, L]
                setattr(out, name, vector.view(block, batch).t().reshape(-1))
        fix_own_history_rows(out, seqs, block, self.mask_token)
        if any(seq.sampling_param.response_format is not None for seq in seqs):
            _warn_once(seqs, lambda p: p.response_format is not None, 'response_format is not supported with '
                       'diffusion decoding (grammar matchers follow one token at a time); ignored')
            out.response_formats = (None, ) * len(out.response_formats)
        if out.logits_processors is not None and len(out.logits_processors) == batch and any(out.logits_processors):
            # each row of the request's block gets the request's processors (called once per row per step),
            # logit_bias as one op per row (.logit_bias), under a guard that fails the request alone if one raises
            per_request = [None if ps is None else [RequestProcessors([vectorised(p) for p in ps], seq, seqs)]
                           for ps, seq in zip(out.logits_processors, seqs)]
            out.logits_processors = [ps for ps in per_request for _ in range(block)]
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
