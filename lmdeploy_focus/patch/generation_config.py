"""Patch 15: ``GenerationConfig`` rejects an out-of-range sampling value with a ``ValueError`` naming the
field (see package docstring)."""
import functools


def apply(messages_module) -> None:
    from ..serving.validation import check_construction

    cls = messages_module.GenerationConfig
    upstream = cls.__post_init__
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is not None:
        return

    @functools.wraps(upstream)
    def __post_init__(self):
        check_construction(self)  # ours first: upstream's bare asserts name nothing
        return upstream(self)

    __post_init__.__lmdeploy_focus_upstream__ = upstream
    cls.__post_init__ = __post_init__
