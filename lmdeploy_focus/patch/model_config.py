"""Patch 4: wrap ``ModelConfig.from_pretrained`` to settle the FOCUS options on the model it resolved."""
import functools
import inspect


def apply(config_module) -> None:
    from ..config.model_options import settle_focus_options

    model_config_cls = config_module.ModelConfig
    upstream = model_config_cls.from_pretrained.__func__
    signature = inspect.signature(upstream)

    @functools.wraps(upstream)
    def from_pretrained(cls, *args, **kwargs):
        model_config = upstream(cls, *args, **kwargs)
        spec_method = signature.bind(cls, *args, **kwargs).arguments.get('spec_method')
        settle_focus_options(model_config, spec_method)
        return model_config

    from_pretrained.__lmdeploy_focus_upstream__ = upstream
    model_config_cls.from_pretrained = classmethod(from_pretrained)
