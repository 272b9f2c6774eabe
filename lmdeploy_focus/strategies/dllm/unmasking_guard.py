"""Run upstream's unmasker on processed positions only (spec §2.2).

Under a sparse step only the processed masked slots have logits (``[M, V]``, or scattered into a zeroed
``[B*L, V]`` where a request needs every position). A MASKED slot that was not processed this step has
no logits and must not be unmasked. Delayed cache alone never leaves a masked slot out
(masked positions are always uncached), but FOCUS eviction does.

We hide those slots from upstream's ``UnmaskingProcessor`` (unchanged) by presenting them as
CACHED: every strategy only ever unmasks MASKED slots, and a CACHED slot can neither make the
block look "all UNMASKED" (which would commit it) nor take a top-k / sequential pick. After
unmasking they are MASKED again. Their output token is the input id (the mask token), as upstream
gives every non-masked slot, and ``step_decode`` resets masked slots to the mask token anyway.

The step's logits exist only for the rows whose slot is masked and fresh (``logit_slots``); the
sampled ids of those rows are placed at their slots and :class:`RowLogitsUnmasking` scores only
them: every other slot scores 0, which upstream gives every slot it may not unmask anyway.
"""
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.strategies.dllm.unmasking import UnmaskingProcessor

DLLM_MASKED = consts.DLLM_MASKED
DLLM_CACHED = consts.DLLM_CACHED


def masked_but_unprocessed(input_mask: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """bool [B, L]: slots that are MASKED in the step's input but got no fresh logits (``fresh``: bool [B, L]).
    The decode step computes the same inside its front (``FrontOutputs.masked_unprocessed``)."""
    return (input_mask.view(fresh.shape) == DLLM_MASKED) & ~fresh


class RowLogitsUnmasking(UnmaskingProcessor):
    """Upstream's unmasker, given logits of some rows only: ``slots`` (int64 [M]) names their ``B*L``
    slots (None: logits of every slot, upstream's layout)."""

    slots: torch.Tensor | None = None

    def _get_scores(self, logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        if self.slots is None:
            return super()._get_scores(logits, token_ids)
        rows = super()._get_scores(logits, token_ids.index_select(0, self.slots))
        return rows.new_zeros(token_ids.numel()).index_copy_(0, self.slots, rows)


def unmask_processed_only(unmasking_processor: RowLogitsUnmasking, logits: torch.Tensor, input_ids: torch.Tensor,
                          token_ids: torch.Tensor, dllm_mask: torch.Tensor, unprocessed: torch.Tensor | None,
                          logit_slots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``unmasking_processor(logits, input_ids, token_ids, dllm_mask)`` restricted to processed slots:
    ``unprocessed`` (bool [B, L], :func:`masked_but_unprocessed`) are the MASKED slots without fresh logits
    (None: there are none, every masked slot was processed).

    Flat upstream layouts: ids and mask ``[B*L]``; ``logits [B*L, V]`` and ``token_ids [B*L]``, or,
    with ``logit_slots`` (int64 [M]), ``logits [M, V]`` and ``token_ids [M]`` of those slots only.
    Returns ``(next_mask, next_token_ids)``, both ``[B*L]``. ``dllm_mask`` itself is left untouched
    (upstream's processor writes into the mask it is given; here that is a private copy).
    """
    hidden = None if unprocessed is None else unprocessed.flatten()
    guarded_mask = dllm_mask.clone() if hidden is None else dllm_mask.masked_fill(hidden, DLLM_CACHED)
    if logit_slots is not None:
        # rows without logits take their input id, as upstream gives every slot it does not unmask
        token_ids = input_ids.clone().index_copy_(0, logit_slots, token_ids.to(input_ids.dtype))
    unmasking_processor.slots = logit_slots
    try:
        result = unmasking_processor(logits, input_ids, token_ids, guarded_mask)
    finally:
        unmasking_processor.slots = None
    if isinstance(result, tuple):
        next_mask, next_token_ids = result
    else:  # upstream returns the mask alone when no unmasking strategy is configured
        next_mask, next_token_ids = result, token_ids
    if hidden is not None:
        next_mask = next_mask.masked_fill(hidden, DLLM_MASKED)
    return next_mask, next_token_ids
