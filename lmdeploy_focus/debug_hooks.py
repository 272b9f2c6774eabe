"""Debug hooks that another installed package may plug into the engine, without the runtime importing it.

The runtime never imports development code. A package that wants to observe the engine (the
development package's step recorder, ``lmdeploy_focus_dev.testing.step_recorder``) declares an entry
point in the group :data:`AGENT_STRATEGY_HOOKS`; its *name* is the environment variable that switches
it on, its *object* a callable ``strategy -> strategy`` applied to the model-agent strategy the
factory builds. Nothing is looked up or imported unless one of those variables is set.

Example (``dev/pyproject.toml``)::

    [project.entry-points."lmdeploy_focus.agent_strategy_hooks"]
    LMDEPLOY_FOCUS_RECORD_STEPS = "lmdeploy_focus_dev.testing.step_recorder:maybe_record_steps"
"""
import os
from importlib.metadata import entry_points

from .log import logger

AGENT_STRATEGY_HOOKS = 'lmdeploy_focus.agent_strategy_hooks'
_HOOK_ENV_PREFIX = 'LMDEPLOY_FOCUS_'


def _requested_hooks(group: str):
    if not any(k.startswith(_HOOK_ENV_PREFIX) and v for k, v in os.environ.items()):
        return []  # the common case: no debug variable set, no metadata scan
    return [ep for ep in entry_points(group=group) if os.environ.get(ep.name)]


def wrap_agent_strategy(strategy):
    """``strategy`` passed through every hook whose environment variable is set (usually none)."""
    for ep in _requested_hooks(AGENT_STRATEGY_HOOKS):
        logger.info(f'{ep.name} set: model-agent strategy wrapped by {ep.value} (debug hook).')
        strategy = ep.load()(strategy)
    return strategy
