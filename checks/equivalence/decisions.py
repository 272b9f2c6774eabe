"""Why two unmasking decisions taken on identical inputs differ, and by how much.

A decision is the step's output block: which MASKED slots got unmasked (``next_mask``) and with
which token (``next_ids`` at unmasked slots). On identical inputs a difference has two causes:

* ``argmax``: a slot unmasked in both runs got different tokens, i.e. the top-1 logit of that
  row flipped. Gap per run: its top-1 logit minus its logit of the other run's token (exact when
  that token is in its recorded top-k or probes, else a lower bound: top-1 minus top-k).
* ``selection``: different slots were unmasked. Static top-k: run A ranks its extra slots above
  B's extra slots by ``min log c_A[only A] - max log c_A[only B]`` and vice versa. Dynamic
  threshold: the always-unmasked most confident slot swapped (same gap as static with k=1), or a
  slot's confidence crossed the threshold (gap: |log c - log threshold|). Sequential unmasking
  never depends on logits, so a selection difference there is unexplained (gap = inf).

The deciding gap of a component is the larger of the two runs' gaps (see ``tolerances``).
"""
import math
from dataclasses import dataclass

import torch
from lmdeploy.pytorch import consts

MASKED, UNMASKED = consts.DLLM_MASKED, consts.DLLM_UNMASKED


@dataclass
class UnmaskRule:
    strategy: str  # 'low_confidence_static', 'low_confidence_dynamic' or 'sequential'
    threshold: float | None = None


@dataclass
class Component:
    kind: str  # 'argmax', 'selection' or 'other'
    positions: list[int]
    gap: float  # deciding gap (logits for argmax, log-confidence for selection)
    gap_a: float
    gap_b: float
    lower_bound: bool = False  # the gap is a lower bound (the other token was not recorded)


def _log(x: torch.Tensor) -> torch.Tensor:
    return x.double().log()


def newly_unmasked(step) -> torch.Tensor:
    return (step.input_mask == MASKED) & (step.next_mask != MASKED)


def _logit_of(step, position: int, token: int) -> float | None:
    """This run's logit of ``token`` at ``position`` if it was recorded (top-k or probe), else None."""
    hits = (step.topk_ids[position] == token).nonzero()
    if hits.numel():
        return float(step.topk_values[position, hits[0, 0]])
    return None


def _argmax_gap(step, position: int, other_token: int, probe_ids: torch.Tensor | None) -> tuple[float, bool]:
    top1 = float(step.topk_values[position, 0])
    value = _logit_of(step, position, other_token)
    if value is None and probe_ids is not None:
        hits = (probe_ids == other_token).nonzero()
        if hits.numel():
            value = float(step.probe_logits[position, hits[0, 0]])
    if value is None:  # not in the top-k: below the k-th value
        return top1 - float(step.topk_values[position, -1]), True
    return top1 - value, False


def argmax_component(a, b, positions: list[int], probe_ids: torch.Tensor | None) -> Component:
    gaps_a, gaps_b, lower = [], [], False
    for p in positions:
        gap_a, lower_a = _argmax_gap(a, p, int(b.next_ids[p]), probe_ids)
        gap_b, lower_b = _argmax_gap(b, p, int(a.next_ids[p]), probe_ids)
        gaps_a.append(gap_a)
        gaps_b.append(gap_b)
        lower = lower or lower_a or lower_b
    per_position = [max(x, y) for x, y in zip(gaps_a, gaps_b)]
    return Component('argmax', positions, max(per_position), max(gaps_a), max(gaps_b), lower)


def _swap_gap(step, preferred: torch.Tensor, other: torch.Tensor) -> float:
    """How much this run's log-confidence ranks ``preferred`` slots above ``other`` slots."""
    log_conf = _log(step.confidence)
    return float(log_conf[preferred].min() - log_conf[other].max())


def _selection_swap(a, b, only_a: torch.Tensor, only_b: torch.Tensor) -> Component:
    positions = sorted((only_a | only_b).nonzero().flatten().tolist())
    if not only_a.any() or not only_b.any():  # a count mismatch is no ranking swap
        return Component('selection', positions, math.inf, math.inf, math.inf)
    gap_a, gap_b = _swap_gap(a, only_a, only_b), _swap_gap(b, only_b, only_a)
    return Component('selection', positions, max(gap_a, gap_b), gap_a, gap_b)


def _most_confident_masked(step) -> int:
    log_conf = _log(step.confidence).masked_fill(step.input_mask != MASKED, -math.inf)
    return int(log_conf.argmax())


def _dynamic_selection(a, b, only_a: torch.Tensor, only_b: torch.Tensor, threshold: float) -> list[Component]:
    components = []
    forced_a, forced_b = _most_confident_masked(a), _most_confident_masked(b)
    differing = (only_a | only_b).clone()
    if forced_a != forced_b:  # the slot unmasked regardless of the threshold swapped
        pick_a, pick_b = torch.zeros_like(only_a), torch.zeros_like(only_b)
        pick_a[forced_a], pick_b[forced_b] = True, True
        components.append(_selection_swap(a, b, pick_a, pick_b))
        differing[forced_a] = differing[forced_b] = False
    positions = differing.nonzero().flatten().tolist()
    if positions:
        log_thr = math.log(threshold)
        dist_a = [abs(float(_log(a.confidence[p])) - log_thr) for p in positions]
        dist_b = [abs(float(_log(b.confidence[p])) - log_thr) for p in positions]
        per_position = [max(x, y) for x, y in zip(dist_a, dist_b)]
        components.append(Component('selection', positions, max(per_position), max(dist_a), max(dist_b)))
    return components


def decision_components(a, b, rule: UnmaskRule, probe_ids: torch.Tensor | None = None) -> list[Component]:
    """Components of the difference between two decisions on identical inputs ([] if none)."""
    components = []
    sel_a, sel_b = newly_unmasked(a), newly_unmasked(b)
    only_a, only_b = sel_a & ~sel_b, sel_b & ~sel_a
    if only_a.any() or only_b.any():
        if rule.strategy == 'low_confidence_static':
            components.append(_selection_swap(a, b, only_a, only_b))
        elif rule.strategy == 'low_confidence_dynamic' and rule.threshold is not None:
            components.extend(_dynamic_selection(a, b, only_a, only_b, rule.threshold))
        else:
            positions = (only_a | only_b).nonzero().flatten().tolist()
            components.append(Component('selection', positions, math.inf, math.inf, math.inf))
    flipped = sel_a & sel_b & (a.next_ids != b.next_ids)
    if flipped.any():
        components.append(argmax_component(a, b, flipped.nonzero().flatten().tolist(), probe_ids))
    # the remaining outputs follow from the inputs alone (commit, kept slots); any difference is unexplained
    other = ((a.next_mask != b.next_mask) & ~(only_a | only_b)) | (
        (a.next_mask != MASKED) & (b.next_mask != MASKED) & ~sel_a & ~sel_b & (a.next_ids != b.next_ids))
    if other.any():
        positions = other.nonzero().flatten().tolist()
        components.append(Component('other', positions, math.inf, math.inf, math.inf))
    return components


def decisions_differ(a, b) -> bool:
    """Different output blocks: mask states, or token ids at slots that are not MASKED afterwards."""
    if not torch.equal(a.next_mask, b.next_mask):
        return True
    kept = a.next_mask != MASKED
    return not torch.equal(a.next_ids[kept], b.next_ids[kept])
