"""Patch 4: wrap ``ModelConfig.from_pretrained`` to drop FOCUS options for non-DLLM models."""
import functools


def apply(config_module) -> None:
    from ..config.model_options import drop_focus_options_for_non_dllm

    model_config_cls = config_module.ModelConfig
    upstream = model_config_cls.from_pretrained.__func__

    @functools.wraps(upstream)
    def from_pretrained(cls, *args, **kwargs):
        model_config = upstream(cls, *args, **kwargs)
        drop_focus_options_for_non_dllm(model_config)
        return model_config

    from_pretrained.__lmdeploy_focus_upstream__ = upstream
    model_config_cls.from_pretrained = classmethod(from_pretrained)
