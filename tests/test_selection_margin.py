"""``focus_spec.selection_margin``: how far an importance selection is from a flip. The engine-path replay tests
redraw prompts whose reference run selects within rounding of a flip (fp32 engine, fp64 oracle), so the margin
must never overstate the distance (a flip inside it would fail those tests at random), and must be small on a tie."""
import math
import random
import secrets

import pytest

from lmdeploy_focus_dev.reference import focus_spec


def test_no_flip_within_the_margin():
    """Moving every delta by less than a quarter of the margin keeps the same candidates (the threshold mean + std
    moves by less than half of it)."""
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    trials, checked = 300, 0
    for _ in range(trials):
        n = rng.randint(2, 12)
        target = rng.randint(1, n - 1)
        delta = [rng.choice([rng.gauss(0, 1), round(rng.gauss(0, 1), 1)]) for _ in range(n)]
        positions = sorted(rng.sample(range(32), n))
        progress = rng.randint(-1, positions[0])
        margin = focus_spec.selection_margin(delta, target, 'importance')
        if margin == 0:
            continue  # a tie: nothing to keep
        checked += 1
        chosen = focus_spec.select(positions, delta, target, progress, 'importance')
        for _ in range(5):
            moved = [d + rng.uniform(-0.24, 0.24) * margin for d in delta]
            assert focus_spec.select(positions, moved, target, progress, 'importance') == chosen, (seed, delta, target)
    # ties (margin 0) come from the rounded deltas, ~2.4% of trials: a floor far below that rate
    assert checked >= trials // 2, (seed, checked)


def test_a_near_tie_has_a_near_zero_margin():
    # target 2 of five, too few above mean + std for the rule, so the top two are kept: 0.3 against 0.3 + 1e-9
    delta = [0.5, 0.3, 0.3 + 1e-9, 0.0, -0.2]
    positions = [0, 2, 4, 6, 8]
    assert focus_spec.selection_margin(delta, 2, 'importance') < 2e-9
    swapped = [0.5, 0.3 + 1e-9, 0.3, 0.0, -0.2]
    assert focus_spec.select(positions, delta, 2, -1, 'importance') != focus_spec.select(positions, swapped, 2, -1,
                                                                                        'importance')
    # the threshold counts, not only the gap: mean 0, std sqrt(2/3), so 1.0 is 0.18 above it (its gap to 0.0 is 1)
    assert focus_spec.selection_margin([1.0, 0.0, -1.0], 1, 'importance') == pytest.approx(1 - math.sqrt(2 / 3))


def test_margin_where_deltas_decide_nothing():
    assert focus_spec.selection_margin([0.1, 0.1, 0.1], 1, 'leftmost') == math.inf
    assert focus_spec.selection_margin([0.3, 0.1], 2, 'importance') == math.inf  # keeps all: no eviction
    assert focus_spec.selection_margin([0.3, 0.1], 0, 'importance') == math.inf
    # two candidates: the larger is mean + std exactly and both rules keep it; only the gap counts
    assert focus_spec.selection_margin([0.3, 0.1], 1, 'importance') == pytest.approx(0.2)
