"""Patch 9b: a :class:`~lmdeploy_focus.serving.validation.FieldError` rendered by the endpoints carries its
field in the OpenAI error's ``param`` (see package docstring)."""


def apply(errors_module) -> None:
    from ..serving.boundary import wrap_create_request_error_response

    upstream = errors_module.create_request_error_response
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is None:
        errors_module.create_request_error_response = wrap_create_request_error_response(upstream)
