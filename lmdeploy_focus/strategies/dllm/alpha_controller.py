"""The α controller of ``--dllm-focus-alpha auto``: pure functions of device tensors, no I/O, no host reads.

What it measures. Some decode steps of some sequences run in shadow mode (the selection is computed
with the controller's α, nothing is evicted). Over the sequences of those steps whose candidates
outnumber their target (the only ones where a selection matters), each step gives three sums:
``decoded`` tokens, ``selected`` (decoded tokens the selection had kept) and ``random`` (the number a
uniformly random subset of the same size would have kept in expectation, Σ |decoded|·|selected|/|cand|;
the same columns as ``run_stats``). The controller keeps exponential moving averages of the three
(one estimate per engine: the running batch changes every step, the model does not), so
``recall = hits / decoded`` and ``random_recall = random / decoded`` are recent, smoothed ratios.

What it does with it.

* α moves multiplicatively towards the target recall, ``α ← clip(α · exp(gain · (target - recall)),
  [α_min, α_max])``: recall grows with α (a larger target keeps more candidates), so this is a
  monotone fixed-point iteration with the bounds as hard limits.
* Probation: the controller starts fallen back, evicting nothing, and evicts only once the shadow
  steps have shown what a recovery needs (below). A model whose selection is no better than chance
  then never has its outputs changed by FOCUS, not even for the first requests after start-up (on
  the committed 5M model, starting evicting cost 4 points of agreement with stock before the
  fall-back came: ``benchmark/results/2026-12-05_cpu_auto_alpha_quality/``). A model with a good
  selection waits ``min_updates`` informative shadow updates, a few decode steps at serving batch sizes.
* Fall-back: when the selection is no better than chance (``recall - random_recall < margin``) or the
  target is out of reach at ``α_max``, FOCUS stops evicting for the model (the engine then runs the
  non-shadow steps with every candidate kept). Shadow steps go on, so the estimate keeps moving; when
  the lift reaches ``recover_margin`` (hysteresis, > ``margin``) and the target is met below α_max, it
  evicts again. A switch needs ``min_updates`` informative updates since the last one, so a few noisy
  steps do not flip it.
* Per block: nothing here resets when a block is committed. Recall is a property of the model and the
  α, not of one block, and a sequence's block spans only a handful of steps (often fewer than one
  shadow period), so a per-block estimate would hold almost no evidence. What does reset per block is
  the per-sequence FOCUS state the targets are computed from (progress, decoded-per-step average,
  :mod:`lmdeploy_focus.models.step_state.focus_state`). The shadow schedule
  (:mod:`lmdeploy_focus.models.step_state.shadow_schedule`) runs across blocks for the same reason.

Every state field is a 0-d tensor on the step's device and :func:`update` is a handful of elementwise
kernels: it can run after every step without a sync and inside a CUDA graph. Deterministic: same
inputs, same state (the only randomness of ``auto`` is the shadow schedule's seeded phases).
"""
import math
from dataclasses import dataclass, fields

import torch

from ...config.options import (AUTO_RECOVER_HYSTERESIS, DEFAULT_AUTO_ALPHA_MAX, DEFAULT_AUTO_MARGIN,
                               DEFAULT_AUTO_TARGET_RECALL, DEFAULT_FOCUS_ALPHA)


@dataclass(frozen=True)
class AlphaControllerConfig:
    target_recall: float = DEFAULT_AUTO_TARGET_RECALL  # fraction of the decoded tokens the kept set must contain
    alpha_min: float = 1.0  # α < 1 keeps fewer tokens than the model decodes per step on average
    alpha_max: float = DEFAULT_AUTO_ALPHA_MAX  # above this the kept set is most of the block at typical decode rates
    alpha_init: float = DEFAULT_FOCUS_ALPHA  # the fixed default
    gain: float = 1.0  # log-α step per unit of recall error (0.05 error: α × 1.05)
    decay: float = 0.8  # weight of the past in the moving averages, per informative update
    margin: float = DEFAULT_AUTO_MARGIN  # importance recall within this of random recall: fall back
    recover_margin: float = DEFAULT_AUTO_MARGIN + AUTO_RECOVER_HYSTERESIS  # lift needed to evict again (hysteresis)
    min_updates: int = 8  # informative updates since the last switch before fall-back / recovery
    probation: bool = True  # start fallen back: evict only once the shadow steps qualify the selection

    @classmethod
    def from_options(cls, options) -> 'AlphaControllerConfig':
        """The controller a user asked for (``FocusOptions``' ``focus_auto_*`` fields); the rest stays default."""
        alpha_max = options.focus_auto_alpha_max
        return cls(target_recall=options.focus_auto_target_recall, alpha_max=alpha_max,
                   alpha_init=min(cls.alpha_init, alpha_max), margin=options.focus_auto_margin,
                   recover_margin=options.focus_auto_margin + AUTO_RECOVER_HYSTERESIS)

    def __post_init__(self):
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f'target recall must lie in (0, 1], got {self.target_recall}')
        if not 1.0 <= self.alpha_min <= self.alpha_init <= self.alpha_max or not math.isfinite(self.alpha_max):
            raise ValueError(f'need 1 <= alpha_min <= alpha_init <= alpha_max < inf, got {self.alpha_min}, '
                             f'{self.alpha_init}, {self.alpha_max}')
        if not 0.0 <= self.decay < 1.0 or self.gain <= 0.0:
            raise ValueError(f'need 0 <= decay < 1 and gain > 0, got decay {self.decay}, gain {self.gain}')
        if not 0.0 <= self.margin < self.recover_margin:
            raise ValueError(f'need 0 <= margin < recover_margin, got {self.margin}, {self.recover_margin}')
        if self.min_updates < 1:
            raise ValueError(f'min_updates must be >= 1, got {self.min_updates}')


@dataclass(frozen=True)
class AlphaControllerState:
    alpha: torch.Tensor  # float32 []: the α a shadow step selects with (and every step, unless fallen back)
    hits: torch.Tensor  # float32 []: moving average of selected decoded tokens
    decoded: torch.Tensor  # float32 []: moving average of decoded tokens (scored sequences only)
    random: torch.Tensor  # float32 []: moving average of the random baseline's expected hits
    fallback: torch.Tensor  # bool []: FOCUS does not evict for this model now
    since_switch: torch.Tensor  # int64 []: informative updates since the last fall-back / recovery
    updates: torch.Tensor  # int64 []: informative updates in all
    fallbacks: torch.Tensor  # int64 []: times it fell back after evicting (probation's start is not one)


def initial_state(config: AlphaControllerConfig, device=None) -> AlphaControllerState:
    def full(value, dtype):
        return torch.full((), value, dtype=dtype, device=device)

    return AlphaControllerState(alpha=full(config.alpha_init, torch.float32),
                                hits=full(0.0, torch.float32),
                                decoded=full(0.0, torch.float32),
                                random=full(0.0, torch.float32),
                                fallback=full(config.probation, torch.bool),
                                since_switch=full(0, torch.long),
                                updates=full(0, torch.long),
                                fallbacks=full(0, torch.long))


def recalls(state: AlphaControllerState) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [] (importance recall, random recall) of the moving averages; 1 and 0 before any evidence."""
    some = state.decoded > 0
    denominator = state.decoded.clamp(min=1e-6)
    return (torch.where(some, state.hits / denominator, torch.ones_like(state.hits)),
            torch.where(some, state.random / denominator, torch.zeros_like(state.random)))


def update(state: AlphaControllerState, config: AlphaControllerConfig, decoded: torch.Tensor,
           selected: torch.Tensor, random: torch.Tensor) -> AlphaControllerState:
    """One step's shadow counts (any shape, summed: per sequence or totals) folded into the state.

    A step without scored decoded tokens (no sequence in shadow, or nothing decoded where it mattered)
    leaves the state unchanged: no evidence, no move.
    """
    n = decoded.to(torch.float32).sum()
    informative = n > 0
    d = config.decay

    def mix(average, value):
        return torch.where(informative, d * average + value.to(torch.float32).sum(), average)

    hits, seen, rand = mix(state.hits, selected), mix(state.decoded, decoded), mix(state.random, random)
    moved = AlphaControllerState(alpha=state.alpha, hits=hits, decoded=seen, random=rand, fallback=state.fallback,
                                 since_switch=state.since_switch, updates=state.updates, fallbacks=state.fallbacks)
    recall, random_recall = recalls(moved)
    alpha = (state.alpha * torch.exp(config.gain * (config.target_recall - recall))).clamp(config.alpha_min,
                                                                                           config.alpha_max)
    alpha = torch.where(informative, alpha, state.alpha)
    lift = recall - random_recall
    settled = (state.since_switch + 1) >= config.min_updates
    # out of reach: already at α_max and still short of the target
    unreachable = (state.alpha >= config.alpha_max) & (recall < config.target_recall)
    fall = informative & settled & ~state.fallback & ((lift < config.margin) | unreachable)
    recover = (informative & settled & state.fallback & (lift >= config.recover_margin) &
               (recall >= config.target_recall) & (alpha < config.alpha_max))
    switched = fall | recover
    step = informative.long()
    return AlphaControllerState(alpha=alpha, hits=hits, decoded=seen, random=rand,
                                fallback=state.fallback ^ switched,
                                since_switch=torch.where(switched, 0, state.since_switch + step),
                                updates=state.updates + step,
                                fallbacks=state.fallbacks + fall.long())


def step_alpha(state: AlphaControllerState, shadow: torch.Tensor, keep_all_alpha: float) -> torch.Tensor:
    """float32 [B]: the α each sequence's selection uses this step.

    ``shadow`` (bool [B]): the sequences measured this step select with the controller's α; the others
    too, unless the controller has fallen back, then with ``keep_all_alpha`` (the block length: the
    target covers every candidate, nothing is evicted; spec §3.4, α ≥ L reproduces delayed cache).
    """
    live = torch.where(state.fallback, state.alpha.new_full((), keep_all_alpha), state.alpha)
    return torch.where(shadow, state.alpha, live).to(torch.float32)


def as_dict(state: AlphaControllerState) -> dict[str, torch.Tensor]:
    """The state's tensors by field name (for export; reading them is the caller's host sync)."""
    return {f.name: getattr(state, f.name) for f in fields(state)}


def host_report(state: AlphaControllerState) -> dict[str, float | int | bool]:
    """The state and its two recalls as host values (one sync each: for tests, tools and logs, never per step)."""
    report = {k: v.item() for k, v in as_dict(state).items()}
    report['recall'], report['random_recall'] = (x.item() for x in recalls(state))
    return report
