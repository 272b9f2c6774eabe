"""Patch 9c: a value ``GenerationConfig`` refuses is a 400 on every endpoint that builds its config through
upstream's ``build_generation_config`` (see package docstring)."""


def apply(generation_config_module) -> None:
    from ..serving.boundary import wrap_build_generation_config

    upstream = generation_config_module.build_generation_config
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is None:
        generation_config_module.build_generation_config = wrap_build_generation_config(upstream)
