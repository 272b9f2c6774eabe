"""Patch 11: one request failing while being added fails alone; a session ended under its running request answers
it; a dead loop names its cause."""


def apply(engine_module) -> None:
    from ..serving.engine_guard import (answer_before_ending, health_with_cause, isolate_add_message,
                                        keep_the_busy_session, record_loop_failure)

    cls = engine_module.Engine
    if getattr(cls._on_add_message, '__lmdeploy_focus_upstream__', None) is not None:
        return
    cls._on_add_message = isolate_add_message(cls._on_add_message, engine_module.ResponseType.INTERNAL_ENGINE_ERROR)
    cls._on_end_session = keep_the_busy_session(cls._on_end_session)
    cls.end_session = answer_before_ending(cls.end_session)
    cls.async_loop = record_loop_failure(cls.async_loop)
    cls.get_local_health_status = health_with_cause(cls.get_local_health_status)
