"""Patch 10: validation of the templated, tokenised request in ``AsyncEngine``; ``free_cache`` only where it
belongs (see package docstring)."""


def apply(async_engine_module) -> None:
    from ..serving.boundary import (NOT_FOR_DIFFUSION, refuse_for_diffusion, wrap_determine_gen_config,
                                    wrap_free_cache, wrap_request_error_from_status)
    from ..serving.liveness import LIVENESS

    cls = async_engine_module.AsyncEngine
    if getattr(cls._determine_gen_config, '__lmdeploy_focus_upstream__', None) is None:
        cls._determine_gen_config = wrap_determine_gen_config(cls._determine_gen_config)
    upstream_status = cls.__dict__['_request_error_from_status'].__func__
    if getattr(upstream_status, '__lmdeploy_focus_upstream__', None) is None:
        cls._request_error_from_status = staticmethod(wrap_request_error_from_status(upstream_status, LIVENESS))
    if getattr(cls.free_cache, '__lmdeploy_focus_upstream__', None) is None:
        cls.free_cache = wrap_free_cache(cls.free_cache)
    for name, message in NOT_FOR_DIFFUSION.items():
        if getattr(getattr(cls, name), '__lmdeploy_focus_upstream__', None) is None:
            setattr(cls, name, refuse_for_diffusion(getattr(cls, name), message))
