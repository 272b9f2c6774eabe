"""FOCUS ops: the Triton kernels on CUDA tensors, the torch reference elsewhere.

Same names and semantics as :mod:`lmdeploy_focus.kernels.default.focus` (read its docstrings), so
model code written against these runs unchanged in the CPU harness.

``max_q_len`` is the static bound of ``q_seqlens`` (the block length ``L``). The kernels size
their tiles by it; pass it, or they read ``q_seqlens.max()`` from the device first (a host
sync, which also breaks CUDA graph capture).
"""
import torch

from .default import focus as reference
from .default.focus import KeptLayout, count_candidates  # noqa: F401  (one name for both paths)


def _static_bound(max_q_len: int | None, q_seqlens: torch.Tensor) -> int:
    if max_q_len is not None:
        return int(max_q_len)
    return int(q_seqlens.max()) if q_seqlens.numel() else 1


def focus_targets(num_candidates: torch.Tensor, avg_decoded: torch.Tensor, alpha: float) -> torch.Tensor:
    if num_candidates.is_cuda:
        from .cuda.focus_select import cuda_focus_targets
        return cuda_focus_targets(num_candidates.contiguous(), avg_decoded.contiguous(), alpha)
    return reference.focus_targets(num_candidates, avg_decoded, alpha)


def masked_importance(q, k, q_start_loc, q_seqlens, candidate, scale: float, *, max_q_len: int | None = None):
    if q.is_cuda:
        from .cuda.focus_importance import cuda_masked_importance
        return cuda_masked_importance(q, k, q_start_loc.contiguous(), q_seqlens.contiguous(), candidate.contiguous(),
                                      scale, _static_bound(max_q_len, q_seqlens))
    return reference.masked_importance(q, k, q_start_loc, q_seqlens, candidate, scale, max_q_len=max_q_len)


def select_kept(delta, candidate, block_pos, q_start_loc, q_seqlens, targets, progress, policy: str = 'importance',
                *, max_q_len: int | None = None):
    if delta.is_cuda:
        from .cuda.focus_select import cuda_select_kept
        inputs = (t.contiguous() for t in (delta, candidate, block_pos, q_start_loc, q_seqlens, targets, progress))
        return cuda_select_kept(*inputs, policy, _static_bound(max_q_len, q_seqlens))
    return reference.select_kept(delta, candidate, block_pos, q_start_loc, q_seqlens, targets, progress, policy,
                                 max_q_len=max_q_len)


def kept_layout(keep, q_start_loc, q_seqlens, block_pos, history, progress, *,
                max_q_len: int | None = None) -> KeptLayout:
    if keep.is_cuda:
        from .cuda.focus_compact import cuda_kept_layout
        inputs = (t.contiguous() for t in (keep, q_start_loc, q_seqlens, block_pos, history, progress))
        return cuda_kept_layout(*inputs, _static_bound(max_q_len, q_seqlens))
    return reference.kept_layout(keep, q_start_loc, q_seqlens, block_pos, history, progress, max_q_len=max_q_len)
