"""Tensor parallelism for FOCUS importance (spec §10: the fork summed local heads only).

Each rank scores with its local heads; importance is a plain sum over heads, so the delta
``I1 - I0`` is linear in the heads and one all-reduce of the delta over the attention TP group
gives every rank the full-model delta, hence the same selection and the same kept-row counts in
row-parallel all-reduces. TP > 1 is still rejected at config time unless
``LMDEPLOY_FOCUS_ALLOW_TP=1`` (the rest of the delayed-cache path has not run there); this keeps
the reduction point in place.

The collective goes over lmdeploy's attention TP group (``get_tp_group('gpu', 'attn')``) unless a
``group`` is passed: the CPU tests pass a gloo group, with no lmdeploy distributed context.
"""
import functools

import torch
import torch.distributed as dist


@functools.cache
def attention_tp_size() -> int:
    """Attention TP world size of this process's engine (1 without a distributed context); asked once,
    at the first FOCUS step, when the engine's distributed context exists."""
    try:
        from lmdeploy.pytorch.distributed import get_tp_world_rank
        return int(get_tp_world_rank('attn')[0])
    except Exception:  # no dist context (CPU harness, reference) means a single rank
        return 1


def attention_group():
    """lmdeploy's attention TP process group (the one its attention layers' all-reduces use)."""
    from lmdeploy.pytorch.distributed import get_tp_group
    return get_tp_group('gpu', 'attn')


def _all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM, group=None) -> None:
    dist.all_reduce(tensor, op=op, group=attention_group() if group is None else group)


def tp_size_of(tp_size: int | None = None, group=None) -> int:
    """``tp_size`` if given, else the size of ``group`` if given, else the engine's attention TP size."""
    if tp_size is not None:
        return tp_size
    if group is not None:
        return dist.get_world_size(group)
    return attention_tp_size()


def reduce_importance_delta(delta: torch.Tensor, tp_size: int | None = None, group=None) -> torch.Tensor:
    """Sum the local-head importance delta over the attention TP ranks (in place; a no-op at TP 1).

    ``group``: the process group to sum over (default: lmdeploy's attention TP group).
    """
    if tp_size_of(tp_size, group) > 1:
        _all_reduce(delta, group=group)
    return delta
