"""Patch 9: field validation at the api_server's request boundary (see package docstring)."""


def apply(common_module) -> None:
    from ..serving.boundary import wrap_validate_request

    upstream = common_module.validate_request
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is None:
        common_module.validate_request = wrap_validate_request(upstream)
