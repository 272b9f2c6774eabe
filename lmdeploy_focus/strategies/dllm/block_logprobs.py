"""Logprobs of diffusion outputs: each token's logprob from the step that unmasked it, sent with its block.

Upstream computes, at every step, the logprob of the id *sampled* at each of the ``B*L`` rows, and
the engine loop gives a request the ``L`` rows of each step that produced output. For a diffusion
block that is wrong three ways: the step that completes a block unmasks only some of its positions
(the others were decoded by earlier steps, from other logits), the sampled id at a position that
stays masked is not a returned token, and the prompt's part of the first block is not output.

Here each request keeps a record of its current block: when a step unmasks position ``p``, row ``p``
of that step's logprobs is stored (there the kept token is the sampled one, so id and value match).
When the block is complete (every position unmasked, which is when upstream sends its tokens) or the
request stops, the step's rows are replaced by the record; positions never unmasked by a step (the
prompt's) carry index -1, which upstream's emission skips, and its stop-position cut applies as
before. Host-side numpy on the CPU copy of the step's outputs (``L x (k+1)`` values per request
asking for logprobs, only on steps where some request does), before ``_make_infer_outputs`` reads
them (patch 7). Cost: a Python loop over the batch, about 4 ms per step at bs 256, L 32 (CPU-measured),
only on steps where some request asks for logprobs.

Only with an engine ``logprobs_mode`` (upstream computes none without it); the step then holds a
``[B*L, V]`` log-softmax, as upstream's AR path holds ``[B, V]``.
"""
import numpy as np
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.messages import MessageStatus

from ...log import logger

RECORD_ATTR = 'lmdeploy_focus_block_logprobs'  # on the sequence: (values [L, W], indices [L, W])


def clear_record(seq) -> None:
    """A new request or turn of the sequence starts without a record (an aborted block's rows must not
    reach the next turn). Not at every prefill: a request preempted mid-block is prefilled again with
    its half-decoded block, whose rows must stay."""
    setattr(seq, RECORD_ATTR, None)


def _record(seq, block_length: int, width: int):
    """The sequence's block record, at least ``width`` columns wide (a later step's batch may ask for
    more top-k entries than the one that started the record)."""
    record = getattr(seq, RECORD_ATTR, None)
    values = np.zeros((block_length, width), dtype=np.float32)
    indices = np.full((block_length, width), -1, dtype=np.int32)
    if record is not None:
        old_values, old_indices = record
        w = min(width, old_values.shape[1])
        values[:, :w], indices[:, :w] = old_values[:, :w], old_indices[:, :w]
    return values, indices


def emit_block_logprobs(batched_outputs, running, model_inputs, block_length: int) -> None:
    """Rewrite ``batched_outputs.logprobs`` so that each request gets the logprobs of the tokens it is
    sent this step (none while its block is incomplete)."""
    logprobs = batched_outputs.logprobs
    extra = batched_outputs.extra_outputs
    if logprobs is None or extra is None or getattr(extra, 'dllm_mask', None) is None:
        return
    if model_inputs is not None:
        if not model_inputs.is_decoding and model_inputs.logits_indices is not None:
            return  # prompt-logprob scoring rows: upstream's own path
        if model_inputs.is_chunk and not model_inputs.is_last_chunk:
            return  # a prefill chunk outputs nothing
    B, L = len(running), block_length
    if logprobs.vals.size(0) != B * L:
        # not a layout this code knows (raising here would end the engine loop for every request)
        logger.warning(f'DLLM logprobs: {logprobs.vals.size(0)} rows for {B} requests x block {L}; '
                       'none sent this step')
        batched_outputs.logprobs = None
        return
    values = logprobs.vals.float().numpy().reshape(B, L, -1).copy()
    indices = logprobs.indices.numpy().reshape(B, L, -1).copy()
    width = values.shape[-1]
    new_mask = extra.dllm_mask.view(B, L).numpy()
    stopped = batched_outputs.stopped.tolist()
    for b, seq in enumerate(running):
        if seq.status != MessageStatus.RUNNING or seq.sampling_param.num_logprobs <= 0:
            continue  # upstream sends none to these
        old_mask = seq.dllm_mask[-L:]  # the block before this step's update
        newly = (old_mask == consts.DLLM_MASKED) & (new_mask[b] != consts.DLLM_MASKED)
        record_values, record_indices = _record(seq, L, width)
        record_values[newly], record_indices[newly] = values[b][newly], indices[b][newly]
        if stopped[b] or (new_mask[b] == consts.DLLM_UNMASKED).all():
            values[b], indices[b] = record_values, record_indices
            setattr(seq, RECORD_ATTR, None)
        else:
            indices[b] = -1  # nothing of this block is sent yet
            setattr(seq, RECORD_ATTR, (record_values, record_indices))
    batched_outputs.logprobs = type(logprobs)(vals=torch.from_numpy(values.reshape(B * L, width)),
                                              indices=torch.from_numpy(indices.reshape(B * L, width)))
