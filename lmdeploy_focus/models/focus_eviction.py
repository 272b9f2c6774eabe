"""FOCUS inside the eviction layer (layer 1), model-agnostic (spec §3.2–3.7).

Given the layer's post-RoPE queries/keys of every processed row, after the layer's K/V write:
score the masked candidates (importance delta to layer 0), select what to keep, and compact the
step to the kept rows. Everything after this (the layer's attention, its MLP, the deeper layers,
the LM head, the logits scatter and the unmasking guard) sees only kept rows.

One host sync: the kept-row count, so the deeper layers run on exactly the kept rows. It is taken
after the selection kernels are queued and the GPU has layers 0–1 still to finish, and it buys a
forward of (kept / processed) the size; the row count of the step start is the other sync
(:meth:`DelayedCacheRuntime.begin_step`).
"""
from dataclasses import replace

import torch

from ..kernels import focus_ops
from .importance_reduce import reduce_importance_delta
from ..strategies.dllm.processing_set import ProcessingSet


def focus_keep_rows(step, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """bool [N]: the rows that go on past the eviction layer; records the selection in ``step.focus``."""
    focus, meta = step.focus, step.meta
    config = focus.config
    targets = focus_ops.focus_targets(focus.num_candidates, focus.avg_decoded, config.alpha)
    if config.needs_importance:
        importance1 = focus_ops.masked_importance(q, k, meta.q_start_loc, meta.q_seqlens, focus.candidate, scale,
                                                  max_q_len=meta.max_q_seqlen)
        delta = reduce_importance_delta(importance1 - focus.importance0, config.tp_size)
    else:
        delta = torch.zeros(q.size(0), dtype=torch.float32, device=q.device)
    keep = focus_ops.select_kept(delta, focus.candidate, focus.block_pos, meta.q_start_loc, meta.q_seqlens, targets,
                                 focus.progress, policy=config.policy, max_q_len=meta.max_q_seqlen)
    proc = step.proc
    focus.selected_dense = _to_dense(keep, proc, step.num_rows)
    focus.evicting = (targets > 0) & (focus.num_candidates > targets)
    if config.shadow:
        keep = torch.arange(q.size(0), device=q.device) < meta.total  # shadow: every processed row goes on
    return keep


def compact_step(step, keep: torch.Tensor, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shrink the step to the kept rows: returns ``rows`` gathered, updates ``step`` in place."""
    focus, meta = step.focus, step.meta
    layout = focus_ops.kept_layout(keep, meta.q_start_loc, meta.q_seqlens, focus.block_pos, focus.history,
                                   focus.progress, max_q_len=meta.max_q_seqlen)
    # Everything that does not need the kept count is queued before the sync, so the host has
    # little left to launch when the GPU reaches this point. Without shadow, keep == the selection;
    # in shadow mode every processed row is kept.
    kept_dense = step.proc.processed if focus.config.shadow else focus.selected_dense
    kept_proc = ProcessingSet.from_mask(kept_dense)
    num_kept = int(layout.total)  # the host sync of the eviction (see module docstring)
    src = layout.src_row[:num_kept]
    gathered = [focus_ops.gather_rows(x, src, num_kept) for x in rows]
    step.proc = kept_proc
    step.meta = replace(meta,
                        input_ids=None,
                        position_ids=meta.position_ids.index_select(0, src),
                        q_seqlens=layout.q_seqlens,
                        q_start_loc=layout.q_start_loc,
                        kv_seqlens=layout.kv_seqlens,
                        total=layout.total,
                        num_rows=num_kept)
    focus.progress_out = layout.progress
    focus.processed_rows, focus.kept_rows = step.num_rows, num_kept
    step.num_rows = num_kept
    step.exact_rows = True  # the kept count was read: no padding rows past this point
    return gathered


def _to_dense(row_flags: torch.Tensor, proc: ProcessingSet, num_rows: int) -> torch.Tensor:
    """bool [B, L] from per-row flags of the step's first ``num_rows`` ragged rows."""
    dense = torch.zeros(proc.num_rows, dtype=torch.bool, device=row_flags.device)
    valid = torch.arange(num_rows, device=row_flags.device) < proc.total
    dense.index_copy_(0, proc.flat_index[:num_rows], row_flags[:num_rows] & valid)
    return dense.view(proc.batch_size, proc.block_length)
