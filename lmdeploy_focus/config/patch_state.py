"""Which upstream patches failed to apply (written by :mod:`lmdeploy_focus.patch`, read by the engine config).

Kept on the bottom floor so the config can refuse delayed cache / FOCUS on a half-patched install without
importing the patch package.
"""
_failed: dict[str, str] = {}  # target module -> the exception its patch raised


def record_failure(target: str, error: BaseException) -> None:
    _failed[target] = f'{type(error).__name__}: {error}'


def patch_failures() -> dict[str, str]:
    """Target modules whose patch raised, with the exception: the plugin is then half applied, and the
    engine config refuses delayed cache / FOCUS instead of letting them run on a partly stock engine."""
    return dict(_failed)
