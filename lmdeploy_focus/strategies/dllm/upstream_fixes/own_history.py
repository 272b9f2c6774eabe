"""Fix of what upstream's DLLM sampling inputs say about a request's own output so far (repetition penalty, n-gram
filter, ``min_new_tokens``), applied by :class:`.sampling.FixedDLLMSamplingStrategy`.

Why: a diffusion request's generated-token count moves only when a block completes, so it is 0 for the whole first
block, and its rows of the batch's generated-ids table are left-padded with the pad id (the model's bos, which for
SDAR is also a stop token) up to the longest neighbour's history:

* n-gram filter (``repetition_ngram_size``): a row with fewer own tokens than ``n`` is compared against padding
  that "repeats"; next to any neighbour with a few tokens out, every position of a first-block request was forced to
  its first stop word: an empty answer, alone it decoded normally;
* repetition penalty: the padding is penalised as if generated, so a request's chance of stopping (the pad id) moved
  with who else was in the batch;
* ``min_new_tokens``: the stop words were banned on every position of each block until the block holding token
  ``min_new_tokens`` completed (upstream adds them to the bad words while the host's count is short, and its device
  counter is per block), so ``min_new_tokens=1`` forced up to a whole block of text.

How: rows with fewer own tokens than their ``n`` get a threshold out of reach (no n-gram of their own yet); a padded
row is padded with its own first generated token, idempotent for the penalty, or with the mask token where the row
also uses the n-gram filter (a token the model is trained not to output: no false match; the penalty then touches
that one column), and a row with no own token gets penalty 1.0; the stop words upstream added to the bad words are
taken out again (their columns repeat one of the row's own bad ids, or are masked off in a row without any: a masked
entry of upstream's bad-word filter writes token 0's old score back, which would undo a ban of token 0 in the same
row), and the per-request ``num_ignore_eos`` counter becomes per position (minus the output tokens before that slot),
which upstream's per-block step (``- L`` when a block completes) keeps exact. Host work: O(B) Python, the rest
vectorised.

Removed by: per-row history lengths in upstream's sampler (no padding read as tokens), a per-position
``min_new_tokens`` counter for diffusion models.
"""
import numpy as np
import torch

# a threshold no row reaches (upstream compares an int count against it)
UNREACHABLE = torch.iinfo(torch.int32).max


def fix_own_history_rows(out, seqs, block: int, mask_token: int | None) -> None:
    """Edit ``out`` (upstream's sampling inputs, already request-major: row ``b * block + p``) in place."""
    # one pass over the batch: own tokens out, n-gram size, the current block's first output slot
    counts, ngram, first_slot = np.array([(seq.num_new_tokens, seq.sampling_param.repetition_ngram_size,
                                           seq.num_valid_ids % block) for seq in seqs], dtype=np.int64).reshape(-1, 3).T
    if out.repetition_ngram_threshold is not None:
        short = torch.from_numpy((ngram > 0) & (counts < ngram)).repeat_interleave(block)
        if short.any():
            out.repetition_ngram_threshold = torch.where(short, UNREACHABLE, out.repetition_ngram_threshold)
    _pad_with_own_tokens(out, counts, ngram, block, mask_token)
    _min_new_tokens_per_position(out, seqs, counts, first_slot, block)


def _pad_with_own_tokens(out, counts, ngram, block, mask_token) -> None:
    history = out.generated_ids_cpu
    if history is None or history.shape[1] == 0:
        return
    batch, width = len(counts), history.shape[1]
    padded = (counts > 0) & (counts < width)
    if padded.any():
        rows = history.reshape(batch, block, width)  # a view: upstream repeated each request's row
        for b in np.flatnonzero(padded):  # only the padding is written (a whole-table np.where was 8x slower)
            start = width - counts[b]
            rows[b, :, :start] = mask_token if ngram[b] > 0 and mask_token is not None else rows[b, 0, start]
    if out.repetition_penalty is not None and (counts == 0).any():
        none_yet = torch.from_numpy(counts == 0).repeat_interleave(block)
        out.repetition_penalty = torch.where(none_yet, 1.0, out.repetition_penalty)


def _min_new_tokens_per_position(out, seqs, counts, first_slot, block) -> None:
    # upstream: stop words join the bad words while the count is short; the per-position counter below bans them
    if out.bad_words is not None:
        dropped = np.zeros((len(seqs), out.bad_words.shape[1]), dtype=bool)
        own_ban = np.full(len(seqs), -1, dtype=np.int64)
        for b, (seq, h) in enumerate(zip(seqs, counts)):
            param = seq.sampling_param
            if not param.ignore_eos and h < param.min_new_tokens and param.stop_words:
                start = len(param.bad_words)
                dropped[b, start:start + len(param.stop_words)] = True
                own_ban[b] = param.bad_words[0] if start else -1
        if dropped.any():
            dropped = torch.from_numpy(dropped).repeat_interleave(block, dim=0)
            own_ban = torch.from_numpy(own_ban).repeat_interleave(block)[:, None].expand_as(out.bad_words)
            out.bad_words = torch.where(dropped & (own_ban >= 0), own_ban, out.bad_words)
            out.bad_mask = out.bad_mask & ~(dropped & (own_ban < 0))
    if out.num_ignore_eos is not None:
        # output tokens before slot p of the current block: p minus its first output slot (the prompt's tail fills
        # the first block's front; its slots are never sampled, and their unclamped values keep upstream's "- L
        # per completed block" step exact for every slot of the next block)
        first = torch.from_numpy(first_slot).repeat_interleave(block)
        slot = torch.arange(block).repeat(len(seqs))
        out.num_ignore_eos = out.num_ignore_eos - (slot - first)
