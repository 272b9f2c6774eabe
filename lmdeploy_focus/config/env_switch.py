"""On/off switches read from ``LMDEPLOY_FOCUS_*`` environment variables (debug and experiment modes)."""
import os


def env_switch(name: str, default: bool = False) -> bool:
    """``$name`` as a switch: unset or empty is ``default``, ``0`` off, ``1`` on. Anything else is refused, so a
    spelling such as ``true`` cannot leave a debug mode silently off (or on)."""
    value = os.environ.get(name, '').strip()
    if not value:
        return default
    if value not in ('0', '1'):
        raise ValueError(f'${name} must be 0 or 1 (unset: {int(default)}), got {value!r}')
    return value == '1'
