"""The one arm table (benchmark/arms): every arm is a valid option set, every script's arm resolves to it."""
import os
import subprocess
import sys

import pytest

from lmdeploy_focus.config.engine_config import _FIELD_TO_OPTION
from lmdeploy_focus.config.options import FocusOptions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmark'))
import arms  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize('name', list(arms.ARMS) + list(arms.ALIASES))
def test_every_arm_is_a_valid_option_set(name):
    fields = arms.arm_fields(name)
    assert set(fields) <= set(_FIELD_TO_OPTION)
    FocusOptions(**{_FIELD_TO_OPTION[k]: v for k, v in fields.items()})  # validates


def test_names_and_aliases_resolve():
    assert arms.canonical('delayed_exact') == arms.canonical('delayed-cache') == 'delayed-exact'
    assert arms.canonical('focus_a1.5') == arms.canonical('focus') == 'focus-importance'
    with pytest.raises(ValueError, match='unknown arm'):
        arms.canonical('focus-random')


def test_without_stock_steps_only_sparse_decoding_arms_change():
    assert arms.arm_fields('stock', stock_steps=False) == {}
    assert arms.arm_fields('focus-leftmost', stock_steps=False) == {**arms.ARMS['focus-leftmost'], 'dllm_stock_step_rows': 0}
    assert arms.arm_fields('delayed', stock_steps=False)['dllm_stock_step_rows'] == 0
    assert arms.arm_fields('shadow', stock_steps=False)['dllm_stock_step_rows'] == 0
    assert 'dllm_stock_step_rows' not in arms.arm_fields('focus-importance')  # the engine's default
    assert arms.arm_fields('focus', stock_steps=False, dllm_stock_step_rows=256)['dllm_stock_step_rows'] == 256


def test_shell_drivers_read_the_table():
    out = subprocess.run([sys.executable, os.path.join(REPO, 'benchmark', 'arms', '__init__.py'), 'flags',
                          'focus-leftmost', 'dllm_focus_alpha=2'], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['--dllm-enable-delayed-cache', '--dllm-enable-focus', '--dllm-focus-alpha', '2',
                                  '--dllm-focus-policy', 'leftmost']


def test_scripts_do_not_define_arms_of_their_own():
    """Every ``ARMS`` of the benchmarks and checks is built from the table (no literal engine fields)."""
    offenders = []
    for folder in ('benchmark', 'checks'):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            if 'results' in root.split(os.sep) or root.endswith(os.path.join('benchmark', 'arms')):
                continue
            for name in files:
                if name.endswith('.py'):
                    text = open(os.path.join(root, name)).read()
                    if 'dllm_enable_focus=True' in text or 'dllm_enable_delayed_cache=True' in text:
                        offenders.append(os.path.relpath(os.path.join(root, name), REPO))
    assert offenders == []
