"""A stand-in for ``DelayedCacheStepInputs`` holding only the fields a test sets: the runtime also asks it whether a
batch runs upstream's stock step (never, here) and to start afresh after stock steps (nothing to do)."""
from types import SimpleNamespace


def step_inputs_stub(**fields) -> SimpleNamespace:
    return SimpleNamespace(stock_step=lambda batch_size: False, fresh_state_if_stale=lambda: None, **fields)
