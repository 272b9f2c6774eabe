"""Upstream's sampler on the rows that have logits, instead of all ``B*L`` block positions.

A delayed-cache / FOCUS step computes logits only for the rows whose slot is still masked
(``DelayedCacheRuntime.row_logits``, ``M`` rows of the ``B*L``). Upstream's sampling inputs hold one
row per block position; every per-row field is gathered to the ``M`` slots, and upstream's logits
processors and sampler run unchanged on them: each row's temperature, penalties, bad/stop words,
seed and offset are its own, so the sampled ids equal the dense path's at those slots.

Three features need the ``B*L`` layout and keep it (the step's row logits scattered, per step):
logprobs where the engine computes them (a ``logprobs_mode``; ``block_logprobs`` reads every position),
custom logits processors (host lists, one entry per row) and grammar-guided formats (dropped for
DLLMs anyway, see ``upstream_fixes``).
"""
from dataclasses import fields, replace

import torch


def needs_dense_rows(sampling_inputs, logprobs_mode: str | None = None) -> bool:
    """Whether this batch's sampling must see all ``B*L`` rows. A request's logprobs count only where the
    engine has a ``logprobs_mode`` (without one upstream computes none, and the dense logits would be a
    ``B*L × V`` tensor for nothing)."""
    logprobs = sampling_inputs.max_num_logprobs
    wants_logprobs = logprobs_mode is not None and logprobs is not None and logprobs >= 0
    return (wants_logprobs or any(sampling_inputs.logits_processors or ())
            or any(sampling_inputs.response_formats or ()))


def select_rows(sampling_inputs, slots: torch.Tensor):
    """``sampling_inputs`` cut to the rows ``slots`` (int64 [M] of the ``B*L``), in that order.

    Every tensor field with one row per block position is gathered; host-side summaries (max top-k,
    greedy, min top-p) stay valid for a subset of rows.
    """
    rows = sampling_inputs.batch_size
    changes = {}
    for f in fields(sampling_inputs):
        value = getattr(sampling_inputs, f.name)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == rows:
            changes[f.name] = value.index_select(0, slots)
    return replace(sampling_inputs, batch_size=slots.numel(), **changes)
