"""Upstream's ``logit_bias`` processor in one op per row (part of the sampling fix, :mod:`.sampling`).

Why: ``/v1/chat/completions`` turns ``logit_bias`` into a processor that adds each bias with its own indexing
op (``logits[token_id] = logits[token_id] + bias``), and a diffusion request runs its processors on every block
row: a 300-entry map is L × 300 launches a step on the engine's loop (9,600 at L = 32), which every request of
the batch waits for. How: the same sums as one ``index_put_`` per row, each token's bias added once, in fp32 and
rounded to the logits' dtype: the same logits for fp32 logits; for bf16 / fp16 logits apart by at most the
rounding of the bias to that dtype (upstream adds a Python scalar, which the CPU rounds to the logits' dtype first;
where logit and bias nearly cancel that is many units in the last place of the sum). Other processors pass through
unchanged.
Removed by: upstream applying ``logit_bias`` as a tensor op.
"""
import functools

import torch

_CACHED = '_lmdeploy_focus_vectorised'
UPSTREAM_NAME = '_logit_bias_processor'  # lmdeploy.serve.openai.chat_completions.logits_processors (0.18)


class TensorLogitBias:
    """``logits[ids] += biases`` in one op; the tensors are moved to the logits' device once."""

    def __init__(self, bias: dict):
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.biases = torch.tensor(list(bias.values()), dtype=torch.float32)

    def __call__(self, token_ids, logits: torch.Tensor) -> torch.Tensor:
        if self.ids.device != logits.device:
            self.ids, self.biases = _to_device(self.ids, logits.device), _to_device(self.biases, logits.device)
        # each id once (a dict's keys): the sum in fp32, rounded to the logits' dtype
        logits[self.ids] = (logits[self.ids] + self.biases).to(logits.dtype)
        return logits


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Once per request: from pinned memory without blocking, since a copy from pageable memory would make the host wait
    for every step queued on the stream (the engine's loop meanwhile)."""
    if device.type == 'cuda':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def vectorised(processor):
    """``processor``, or the one-op equivalent if it is upstream's logit-bias processor (made once per processor:
    the sampling inputs are rebuilt every step)."""
    if not (isinstance(processor, functools.partial) and getattr(processor.func, '__name__', None) == UPSTREAM_NAME
            and len(processor.args) == 1 and isinstance(processor.args[0], dict) and not processor.keywords):
        return processor
    cached = processor.__dict__.get(_CACHED)
    if cached is None:
        cached = processor.__dict__[_CACHED] = TensorLogitBias(processor.args[0])
    return cached
