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
also uses the n-gram filter (no generated token equals it, so it makes no false match), and a row with no own token
gets penalty 1.0; the stop words upstream added to the bad words are masked out again and the per-request
``num_ignore_eos`` counter becomes per position (minus the output tokens before that slot), which upstream's
per-block step (``- L`` when a block completes) keeps exact.

Removed by: per-row history lengths in upstream's sampler (no padding read as tokens), a per-position
``min_new_tokens`` counter for diffusion models.
"""
import torch

# a threshold no row reaches (upstream compares an int count against it)
UNREACHABLE = torch.iinfo(torch.int32).max


def fix_own_history_rows(out, seqs, block: int, mask_token: int | None) -> None:
    """Edit ``out`` (upstream's sampling inputs, already request-major: row ``b * block + p``) in place."""
    counts = [seq.num_new_tokens for seq in seqs]
    ngram = [seq.sampling_param.repetition_ngram_size for seq in seqs]
    if out.repetition_ngram_threshold is not None:
        short = torch.tensor([0 < n and h < n for h, n in zip(counts, ngram)]).repeat_interleave(block)
        if short.any():
            out.repetition_ngram_threshold = torch.where(short, UNREACHABLE, out.repetition_ngram_threshold)
    _pad_with_own_tokens(out, counts, ngram, block, mask_token)
    _min_new_tokens_per_position(out, seqs, counts, block)


def _pad_with_own_tokens(out, counts, ngram, block, mask_token) -> None:
    history = out.generated_ids_cpu
    if history is None or history.shape[1] == 0:
        return
    width = history.shape[1]
    rows = history.reshape(len(counts), block, width)  # a view: upstream repeated each request's row
    for b, (h, n) in enumerate(zip(counts, ngram)):
        if 0 < h < width:
            pad = mask_token if n > 0 and mask_token is not None else rows[b, 0, width - h]
            rows[b, :, :width - h] = pad
    if out.repetition_penalty is not None and 0 in counts:
        none_yet = torch.tensor([h == 0 for h in counts]).repeat_interleave(block)
        out.repetition_penalty = torch.where(none_yet, 1.0, out.repetition_penalty)


def _min_new_tokens_per_position(out, seqs, counts, block) -> None:
    # upstream: stop words join the bad words while the count is short; the per-position counter below bans them
    if out.bad_mask is not None:
        for b, (seq, h) in enumerate(zip(seqs, counts)):
            param = seq.sampling_param
            if not param.ignore_eos and h < param.min_new_tokens and param.stop_words:
                start = len(param.bad_words)
                out.bad_mask[b * block:(b + 1) * block, start:start + len(param.stop_words)] = False
    if out.num_ignore_eos is not None:
        # output tokens before slot p of the current block: p minus its first output slot (the prompt's tail fills
        # the first block's front; its slots are never sampled, and their unclamped values keep upstream's "- L
        # per completed block" step exact for every slot of the next block)
        first = torch.tensor([seq.num_valid_ids % block for seq in seqs]).repeat_interleave(block)
        slot = torch.arange(block).repeat(len(seqs))
        out.num_ignore_eos = out.num_ignore_eos - (slot - first)
