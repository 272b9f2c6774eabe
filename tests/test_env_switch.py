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
