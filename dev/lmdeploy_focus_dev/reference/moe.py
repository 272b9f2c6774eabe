"""Plain-torch MoE pieces of the reference models: the two routing rules and the expert mixture.

Written from the published models' descriptions (shared/reference/models-and-data.md, focus-spec
§1.2), independently of LMDeploy's modules. Routers run in (at least) fp32, as the checkpoints'
own code does.
"""
from collections.abc import Callable

import torch


def _router_logits(hidden: torch.Tensor, gate_weight: torch.Tensor, fp32: bool) -> torch.Tensor:
    compute = torch.promote_types(torch.promote_types(hidden.dtype, gate_weight.dtype), torch.float32)
    logits = hidden.to(compute) @ gate_weight.to(compute).T
    return logits.float() if fp32 else logits


def _decision_gap(values: torch.Tensor, k: int) -> float:
    """Smallest gap, over rows, between the k-th and (k+1)-th largest of ``values [n, m]`` (inf if m <= k)."""
    if values.size(-1) <= k or values.numel() == 0:
        return float('inf')
    top = values.topk(k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]).min().item()


def softmax_topk_route(hidden: torch.Tensor, gate_weight: torch.Tensor, *, top_k: int, norm_topk_prob: bool,
                       margins: list[float] | None = None):
    """Qwen3-MoE / SDAR-MoE: fp32 softmax over all experts, the top-k, renormalised when ``norm_topk_prob``.

    Returns expert ids ``[n, top_k]`` and their weights ``[n, top_k]``. ``margins``, when given, gets
    the smallest score gap that decided the choice (a near tie can flip on rounding noise).
    """
    probs = _router_logits(hidden, gate_weight, fp32=False).softmax(-1, dtype=torch.float32)
    if margins is not None:
        margins.append(_decision_gap(probs, top_k))
    weights, experts = probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return experts, weights


def noaux_tc_route(hidden: torch.Tensor, gate_weight: torch.Tensor, expert_bias: torch.Tensor, *, top_k: int,
                   n_group: int, topk_group: int, scoring: str, norm_topk_prob: bool, scaling: float,
                   router_fp32: bool = True, margins: list[float] | None = None):
    """LLaDA2.0 (BailingMoeV2, DeepSeek-V3 style): expert ids and weights ``[n, top_k]``.

    Scores are sigmoid (or softmax) of the router logits (fp32 when ``router_fp32``, also for fp64
    weights); ``scores + expert_bias`` only chooses: groups are ranked by the sum of their two best
    biased scores, the best ``topk_group`` groups stay eligible, the top-k eligible experts win.
    Their weights are the *unbiased* scores, renormalised when ``norm_topk_prob`` (and top-k > 1),
    times ``scaling``. ``margins``, when given, gets the smallest gap that decided a group or an expert.
    """
    logits = _router_logits(hidden, gate_weight, fp32=router_fp32)
    scores = logits.sigmoid() if scoring == 'sigmoid' else logits.softmax(-1)
    choice = scores + expert_bias.to(scores.dtype)
    n, num_experts = choice.shape
    grouped = choice.view(n, n_group, num_experts // n_group)
    group_score = grouped.topk(2, dim=-1).values.sum(-1) if grouped.size(-1) > 1 else grouped[..., 0]
    best_groups = group_score.topk(topk_group, dim=-1).indices
    allowed = torch.zeros(n, n_group, dtype=torch.bool, device=hidden.device)
    allowed.scatter_(1, best_groups, True)
    allowed = allowed[:, :, None].expand_as(grouped).reshape(n, num_experts)
    eligible = choice.masked_fill(~allowed, float('-inf'))
    experts = eligible.topk(top_k, dim=-1).indices
    if margins is not None:
        margins.append(min(_decision_gap(group_score, topk_group), _decision_gap(eligible, top_k)))
    weights = scores.gather(1, experts)
    if norm_topk_prob and top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return experts, weights * scaling


def mix_experts(x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor,
                expert_fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``sum_k weights[:, k] * expert_fn(experts[:, k], x)`` row by row (each expert runs once on its rows)."""
    out = torch.zeros_like(x)
    for e in experts.unique().tolist():
        rows, slot = (experts == e).nonzero(as_tuple=True)
        out.index_add_(0, rows, expert_fn(e, x[rows]) * weights[rows, slot, None].to(x.dtype))
    return out
