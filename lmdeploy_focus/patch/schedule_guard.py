"""Patch 16: one request failing while the next step is scheduled fails alone (see package docstring and
:mod:`lmdeploy_focus.serving.schedule_guard`)."""


def apply(inputs_maker_module) -> None:
    from ..serving.schedule_guard import attach_request_manager, isolate_forward_inputs

    cls = inputs_maker_module.InputsMakerAsync
    if getattr(cls._make_forward_inputs, '__lmdeploy_focus_upstream__', None) is not None:
        return
    cls._make_forward_inputs = isolate_forward_inputs(cls._make_forward_inputs)
    # build_engine_loop imports this name at call time (contract-tested)
    inputs_maker_module.build_inputs_maker = attach_request_manager(inputs_maker_module.build_inputs_maker)
