"""The α controller of ``--dllm-focus-alpha auto`` on scripted recall sequences (CPU, no model).

A scripted "model" answers each shadow step: given the controller's α, how many of ``N`` decoded tokens
the importance selection kept and how many a random subset of the same size would have kept.
"""

import pytest
import torch

from lmdeploy_focus.models.step_state import shadow_schedule
from lmdeploy_focus.strategies.dllm.alpha_controller import (AlphaControllerConfig, initial_state, recalls,
                                                             step_alpha, update)

N = 20.0  # decoded tokens scored per shadow step


def _run(config, recall_of_alpha, random_recall, steps, state=None):
    """Feed ``steps`` shadow steps; returns the final state and the α trajectory."""
    state = state or initial_state(config)
    alphas = []
    for k in range(steps):
        alpha = float(state.alpha)
        recall = recall_of_alpha(alpha) if callable(recall_of_alpha) else recall_of_alpha[k]
        rand = random_recall(alpha) if callable(random_recall) else random_recall
        state = update(state, config, torch.tensor([N / 2, N / 2]), torch.tensor([N * recall / 2, N * recall / 2]),
                       torch.tensor(N * rand))
        alphas.append(float(state.alpha))
    return state, alphas


def _rising(alpha):  # recall grows with α, 0.95 at α = 7/3
    return min(1.0, 0.6 + 0.15 * alpha)


def test_converges_to_the_alpha_that_meets_the_target():
    config = AlphaControllerConfig()
    state, alphas = _run(config, _rising, 0.3, 200)
    assert alphas[-1] == pytest.approx(7 / 3, abs=0.05)
    assert float(recalls(state)[0]) == pytest.approx(0.95, abs=0.01)
    assert not bool(state.fallback)
    assert max(abs(a - alphas[-1]) for a in alphas[-20:]) < 0.02  # settled, not oscillating


def test_alpha_stays_within_bounds():
    config = AlphaControllerConfig(alpha_min=1.0, alpha_max=3.0, min_updates=10_000)  # no fall-back here
    _, up = _run(config, lambda a: 0.2, 0.0, 100)  # never enough recall: α climbs to α_max, not past it
    assert max(up) == 3.0 and up[-1] == 3.0
    _, down = _run(config, lambda a: 1.0, 0.0, 100)  # always perfect: α falls to α_min, not below
    assert min(down) == 1.0 and down[-1] == 1.0
    assert all(1.0 <= a <= 3.0 for a in up + down)


def test_falls_back_when_importance_is_no_better_than_random():
    config = AlphaControllerConfig(probation=False)
    state, _ = _run(config, lambda a: 0.41, lambda a: 0.38, 30)  # the committed 5M model: 41 % vs 38 %
    assert bool(state.fallback) and int(state.fallbacks) == 1
    # fallen back: non-shadow sequences keep every candidate, shadow ones still select with the probe α
    alpha = step_alpha(state, torch.tensor([True, False]), keep_all_alpha=32.0)
    assert alpha.tolist() == [pytest.approx(float(state.alpha)), 32.0]


def test_falls_back_when_the_target_is_out_of_reach():
    config = AlphaControllerConfig(alpha_max=2.0, probation=False)
    assert not bool(initial_state(config).fallback)
    state, alphas = _run(config, lambda a: 0.8, lambda a: 0.2, 60)  # lift 0.6, but 0.8 < 0.95 at α_max
    assert alphas[-1] == 2.0 and bool(state.fallback)


def test_needs_min_updates_before_falling_back():
    config = AlphaControllerConfig(min_updates=8, probation=False)
    state, _ = _run(config, lambda a: 0.4, lambda a: 0.4, 7)
    assert not bool(state.fallback)
    state, _ = _run(config, lambda a: 0.4, lambda a: 0.4, 1, state)
    assert bool(state.fallback)


def test_recovers_when_the_selection_becomes_informative_again():
    config = AlphaControllerConfig(probation=False)
    state, _ = _run(config, lambda a: 0.4, lambda a: 0.38, 20)
    assert bool(state.fallback)
    state, alphas = _run(config, _rising, lambda a: 0.3, 80, state)
    assert not bool(state.fallback) and int(state.fallbacks) == 1
    assert alphas[-1] == pytest.approx(7 / 3, abs=0.1)
    alpha = step_alpha(state, torch.tensor([False]), keep_all_alpha=32.0)
    assert float(alpha) == pytest.approx(alphas[-1])


def test_hysteresis_no_recovery_inside_the_band():
    config = AlphaControllerConfig(margin=0.05, recover_margin=0.10, probation=False)
    state, _ = _run(config, lambda a: 0.4, lambda a: 0.38, 20)
    state, _ = _run(config, lambda a: 0.99, lambda a: 0.92, 60, state)  # lift 0.07: inside the band
    assert bool(state.fallback)


def test_probation_qualifies_a_good_selection_before_it_evicts():
    """Default start: fallen back (every candidate kept outside shadow steps) until min_updates informative
    updates show the lift and the target; then it evicts, and that is not counted as a fall-back."""
    config = AlphaControllerConfig(min_updates=8)
    state = initial_state(config)
    assert bool(state.fallback)
    assert step_alpha(state, torch.tensor([True, False]), keep_all_alpha=32.0).tolist() == [1.5, 32.0]
    evicting_from = None
    for k in range(60):
        state, _ = _run(config, _rising, 0.3, 1, state)
        if evicting_from is None and not bool(state.fallback):
            evicting_from = k + 1
    assert evicting_from is not None and evicting_from >= config.min_updates
    assert not bool(state.fallback) and int(state.fallbacks) == 0


def test_probation_never_evicts_for_a_chance_level_selection():
    config = AlphaControllerConfig()
    state = initial_state(config)
    for _ in range(200):  # the committed 5M model: 41 % vs 38 %, whatever α does
        state, _ = _run(config, lambda a: 0.41, lambda a: 0.38, 1, state)
        assert bool(state.fallback)
    assert int(state.fallbacks) == 0 and int(state.updates) == 200


def test_steps_without_evidence_change_nothing():
    config = AlphaControllerConfig()
    state, _ = _run(config, _rising, 0.3, 5)
    after = update(state, config, torch.zeros(3), torch.zeros(3), torch.zeros(3))
    for name in ('alpha', 'hits', 'decoded', 'random', 'fallback', 'since_switch', 'updates'):
        assert torch.equal(getattr(after, name), getattr(state, name)), name


def test_update_is_tensor_only():
    """Every field stays a 0-d tensor on the inputs' device (no host value is produced)."""
    config = AlphaControllerConfig()
    state = update(initial_state(config), config, torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([1.0]))
    for value in vars(state).values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0


@pytest.mark.parametrize('kwargs', [dict(target_recall=0.0), dict(alpha_min=0.5), dict(alpha_init=5.0),
                                    dict(decay=1.0), dict(margin=0.2, recover_margin=0.1), dict(min_updates=0)])
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        AlphaControllerConfig(**kwargs)


def test_shadow_schedule_spreads_sequences_and_is_seeded():
    period = 4
    countdown = shadow_schedule.fresh(8, period, seed=1, first_index=0)
    seen = torch.zeros(8, dtype=torch.long)
    per_step = []
    for _ in range(2 * period):
        shadow, countdown = shadow_schedule.tick(countdown, period)
        seen += shadow.long()
        per_step.append(int(shadow.sum()))
    assert seen.tolist() == [2] * 8  # each sequence once per period
    assert per_step == [2] * (2 * period)  # an even load: B / period per step
    assert torch.equal(shadow_schedule.fresh(8, period, 1, 0), shadow_schedule.fresh(8, period, 1, 0))
    assert not torch.equal(shadow_schedule.fresh(8, period, 1, 0), shadow_schedule.fresh(8, period, 2, 0))
