"""Debug and experiment switches (``LMDEPLOY_FOCUS_*``) take 0 or 1; another value is refused where the engine
builds, never silently read as off."""
import pytest

from lmdeploy_focus.config.env_switch import env_switch


@pytest.mark.parametrize('value, default, on', [(None, False, False), (None, True, True), ('', True, True),
                                                ('0', True, False), (' 1 ', False, True), ('1', True, True)])
def test_values(monkeypatch, value, default, on):
    if value is None:
        monkeypatch.delenv('LMDEPLOY_FOCUS_TEST_SWITCH', raising=False)
    else:
        monkeypatch.setenv('LMDEPLOY_FOCUS_TEST_SWITCH', value)
    assert env_switch('LMDEPLOY_FOCUS_TEST_SWITCH', default=default) is on


@pytest.mark.parametrize('value', ['true', 'yes', '2', 'on'])
def test_other_values_are_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv('LMDEPLOY_FOCUS_TEST_SWITCH', value)
    with pytest.raises(ValueError, match=r"\$LMDEPLOY_FOCUS_TEST_SWITCH must be 0 or 1 \(unset: 0\), got '" + value):
        env_switch('LMDEPLOY_FOCUS_TEST_SWITCH')


def _reads():
    """Each switch's reader, as the engine build calls it."""
    from lmdeploy_focus.config import compat
    from lmdeploy_focus.config.options import FocusOptions
    from lmdeploy_focus.models import tp_layout_check
    from lmdeploy_focus.strategies.dllm import phase_timer
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
    from lmdeploy_focus.strategies.dllm.focus_config import focus_config

    def tp_layout():
        tp_layout_check.requested.cache_clear()
        return tp_layout_check.requested()

    return {
        'LMDEPLOY_FOCUS_PHASE_TIMING': phase_timer.phase_timing_requested,
        'LMDEPLOY_FOCUS_DELAYED_CACHE_PROCESS_ALL': lambda: DelayedCacheRuntime(block_length=32).process_all,
        'LMDEPLOY_FOCUS_CHECK_TP_LAYOUT': tp_layout,
        'LMDEPLOY_FOCUS_ALLOW_TP': lambda: compat.check_tensor_parallel(2) is None,
        'LMDEPLOY_FOCUS_AUTO_COST_ONLY': lambda: focus_config(
            FocusOptions(enable_focus=True, focus_alpha='auto').resolved()).auto.probation is False,
    }


@pytest.mark.parametrize('name', sorted(_reads()))
def test_every_debug_switch_refuses_a_spelling_it_would_have_read_as_off(monkeypatch, name):
    monkeypatch.setenv(name, 'true')
    with pytest.raises(ValueError, match=f'{name} must be 0 or 1'):
        _reads()[name]()
    monkeypatch.setenv(name, '1')
    assert _reads()[name]() is True
    from lmdeploy_focus.models import tp_layout_check
    tp_layout_check.requested.cache_clear()


def test_every_focus_variable_the_scripts_and_docs_name_is_one_the_code_reads():
    """A benchmark phase or a doc that sets a renamed / removed ``LMDEPLOY_FOCUS_*`` variable runs the default
    silently (``delayed_process_all`` would be ``delayed_exact``): every name they use must be defined in the code
    (a string literal in the runtime, the dev tools or setup.py). BENCHMARKS.md is a log and may name removed ones."""
    import glob
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = re.compile(r'LMDEPLOY_FOCUS_[A-Z0-9_]*[A-Z0-9]')

    def files(*patterns):
        return [f for p in patterns for f in glob.glob(os.path.join(root, p), recursive=True) if '/build/' not in f]

    defined = set()
    for path in files('lmdeploy_focus/**/*.py', 'dev/lmdeploy_focus_dev/**/*.py', 'setup.py'):
        defined |= set(re.findall(r"""['"](LMDEPLOY_FOCUS_[A-Z0-9_]*[A-Z0-9])['"]""", open(path).read()))
    used = {}
    for path in files('checks/**/*.py', 'benchmark/**/*.py', 'benchmark/**/*.sh', 'scripts/*', 'README.md',
                      'ARCHITECTURE.md'):
        if os.path.isfile(path):
            for found in name.findall(open(path, errors='replace').read()):
                used.setdefault(found, os.path.relpath(path, root))
    assert {'LMDEPLOY_FOCUS_ROW_BUCKETS', 'LMDEPLOY_FOCUS_DISABLE'} <= defined  # the scan reads the code
    assert len(used) >= 10
    unknown = {n: where for n, where in used.items() if n not in defined}
    assert not unknown, f'variables named but not read by the code: {unknown}'
