"""Tensor parallelism for FOCUS importance (spec §10: the fork summed local heads only).

Each rank scores with its local heads; importance is a plain sum over heads, so the delta
``I1 - I0`` is linear in the heads and one all-reduce of the delta over the attention TP group
gives every rank the full-model delta, hence the same selection and the same kept-row counts in
row-parallel all-reduces. TP > 1 is still rejected at config time (the rest of the delayed-cache
path is untested there); this keeps the reduction point in place.
"""
import functools

import torch


@functools.cache
def attention_tp_size() -> int:
    """Attention TP world size of this process's engine (1 without a distributed context); asked once,
    at the first FOCUS step, when the engine's distributed context exists."""
    try:
        from lmdeploy.pytorch.distributed import get_tp_world_rank
        return int(get_tp_world_rank('attn')[0])
    except Exception:  # no dist context (CPU harness, reference) means a single rank
        return 1


def _all_reduce(tensor: torch.Tensor) -> None:
    from lmdeploy.pytorch.distributed import get_tp_group
    torch.distributed.all_reduce(tensor, group=get_tp_group('gpu', 'attn'))


def reduce_importance_delta(delta: torch.Tensor, tp_size: int | None = None) -> torch.Tensor:
    """Sum the local-head importance delta over the attention TP ranks (in place; a no-op at TP 1)."""
    if (attention_tp_size() if tp_size is None else tp_size) > 1:
        _all_reduce(delta)
    return delta
