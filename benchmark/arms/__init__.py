"""The benchmark arms: one table (name -> the arm's FOCUS fields of ``PytorchEngineConfig``), read by every
throughput driver, the quality evaluation and the integration checks.

Names are written with hyphens; an underscore is the same character (``delayed_exact`` is
``delayed-exact``), and a few older names are aliases, so the labels in earlier results still resolve.
A driver adds its own settings (``dllm_track``, thresholds, block length) on top of an arm.

Shell drivers read the table through the command line::

    python3 benchmark/arms/__init__.py flags focus-importance [dllm_focus_alpha=2]
    # -> --dllm-enable-delayed-cache --dllm-enable-focus --dllm-focus-alpha 2 --dllm-focus-policy importance
"""
import sys

FOCUS_ALPHA = 1.5  # the fork's scripts and the paper's runs


def _focus(alpha: float = FOCUS_ALPHA, policy: str = 'importance', **more) -> dict:
    return dict(dllm_enable_focus=True, dllm_focus_alpha=alpha, dllm_focus_policy=policy, **more)


ARMS: dict[str, dict] = {
    'stock': {},  # upstream's decoding with the plugin's upstream fixes
    'delayed-exact': dict(dllm_enable_delayed_cache=True, dllm_delayed_cache_commit='exact'),
    'delayed-fast': dict(dllm_enable_delayed_cache=True, dllm_delayed_cache_commit='fast'),
    'focus-importance': _focus(),
    'focus-leftmost': _focus(policy='leftmost'),
    # every decode step a FOCUS step, small batches too (the default runs them as stock steps: --dllm-stock-step-rows)
    'focus-importance-every-step': _focus(dllm_stock_step_rows=0),
    'focus-leftmost-fast': _focus(policy='leftmost', dllm_delayed_cache_commit='fast'),
    'focus-importance-fast': _focus(dllm_delayed_cache_commit='fast'),  # issue 14 item 4: exact vs fast commit
    'focus-a1.0': _focus(1.0),
    'focus-a2': _focus(2.0),
    'focus-a3': _focus(3.0),
    'focus-auto': _focus('auto'),  # α set online by the controller from shadow steps (issue 19)
    # the same with the leftmost policy: with sequential unmasking its selection is the decoded set, so the
    # controller's qualifying path can be shown on a real model (the 5M one's importance is at chance level)
    'focus-auto-leftmost': _focus('auto', policy='leftmost'),
    # selection computed, nothing evicted: measures how often FOCUS would have kept the decoded tokens
    'shadow': dict(dllm_focus_shadow=True, dllm_focus_alpha=FOCUS_ALPHA, dllm_focus_policy='importance'),
}

ALIASES = {
    'delayed-cache': 'delayed-exact',  # the throughput drivers' label
    'delayed': 'delayed-exact',
    'focus': 'focus-importance',
    'focus-a1.5': 'focus-importance',
    'focus-a1.5-fast': 'focus-importance-fast',
}


def canonical(name: str) -> str:
    """The table's name of ``name`` (underscores read as hyphens, aliases resolved); ValueError if unknown."""
    key = name.replace('_', '-')
    key = ALIASES.get(key, key)
    if key not in ARMS:
        known = ', '.join([*ARMS, *ALIASES])
        raise ValueError(f'unknown arm {name!r}; known: {known}')
    return key


def arm_fields(name: str, stock_steps: bool = True, **more) -> dict:
    """``PytorchEngineConfig`` FOCUS fields of arm ``name``, plus ``more`` (e.g. ``dllm_track=True``).

    ``stock_steps=False``: an arm with delayed cache / FOCUS runs them on every decode step, small batches too
    (``dllm_stock_step_rows=0``): for the checks and evaluations of the delayed-cache / FOCUS step itself, whose
    batches are small. Stock decoding arms are unchanged."""
    fields = {**ARMS[canonical(name)], **more}
    if not stock_steps and _sparse_decode(fields):
        fields.setdefault('dllm_stock_step_rows', 0)
    return fields


def _sparse_decode(fields: dict) -> bool:
    # the engine's own rule (shadow implies FOCUS implies delayed cache); imported here so that the shell
    # drivers' `flags` command needs no plugin on the path
    from lmdeploy_focus.config.options import FocusOptions
    return FocusOptions.from_fields(fields).resolved().uses_sparse_decode


def arm_flags(name: str, **more) -> list[str]:
    """The arm (with ``more`` fields) as command-line flags (``lmdeploy serve``, ``profile_throughput.py``)."""
    flags = []
    for field, value in arm_fields(name, **more).items():
        flag = '--' + field.replace('_', '-')
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    if '--dllm-enable-focus' in flags or '--dllm-focus-shadow' in flags:
        flags.insert(0, '--dllm-enable-delayed-cache')  # implied by the engine; explicit for older drivers
    return flags


def _cli(argv: list[str]) -> str:
    if len(argv) < 2 or argv[0] != 'flags' or not all('=' in a for a in argv[2:]):
        raise ValueError('usage: python3 benchmark/arms/__init__.py flags ARM [FIELD=VALUE ...]')
    more = dict(a.split('=', 1) for a in argv[2:])
    return ' '.join(arm_flags(argv[1], **more))


if __name__ == '__main__':
    try:
        print(_cli(sys.argv[1:]))
    except ValueError as error:
        sys.exit(str(error))
