"""benchmark/serving_wall_time.py: the paired rounds' order, their ratios and the --arm parser."""
import argparse
import os
import random
import statistics
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmark'))
import serving_wall_time as swt  # noqa: E402

sys.path.pop(0)


def test_round_order_alternates_so_no_arm_always_goes_first():
    names = ['stock', 'focus', 'focus_nometrics']
    orders = [swt.round_order(names, i) for i in range(4)]
    assert orders[0] == names and orders[2] == names
    assert orders[1] == names[::-1] and orders[3] == names[::-1]
    for order in orders:
        assert sorted(order) == sorted(names)


def test_ratios_are_each_round_against_the_first_arm():
    rng = random.Random()
    rounds = rng.randint(2, 6)
    walls = {name: [rng.uniform(10, 30) for _ in range(rounds)] for name in ('stock', 'focus', 'other')}
    out = swt.summarize(['stock', 'focus', 'other'], walls)
    assert set(out) == {'focus', 'other'}
    for name in out:
        expected = [w / b for w, b in zip(walls[name], walls['stock'])]
        assert out[name]['round_ratios'] == pytest.approx(expected, abs=1e-3)
        assert out[name]['first_round_ratio'] == pytest.approx(expected[0], abs=1e-3)
        assert out[name]['median_ratio'] == pytest.approx(statistics.median(expected), abs=2e-3)
        assert out[name]['steady_median_ratio'] == pytest.approx(statistics.median(expected[1:]), abs=2e-3)


def test_one_round_has_no_steady_state_ratio():
    out = swt.summarize(['a', 'b'], {'a': [10.0], 'b': [12.5]})
    assert out['b']['round_ratios'] == [1.25] and out['b']['steady_median_ratio'] is None


def test_arm_parser_splits_name_and_arguments_and_names_the_flag_on_error():
    assert swt.parse_arm('stock=') == ('stock', [])
    assert swt.parse_arm('focus=--focus --disable-metrics') == ('focus', ['--focus', '--disable-metrics'])
    for bad in ('--focus', '=--focus', ''):
        with pytest.raises(argparse.ArgumentTypeError, match='--arm'):
            swt.parse_arm(bad)
