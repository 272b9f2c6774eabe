"""The FOCUS settings a decode step runs with, from the user's options: one place for the engine's
strategy factory and the reference-loop backends (quality evaluation, calibration)."""
from dataclasses import replace

from ...config.env_switch import env_switch
from ...config.options import FocusOptions
from ...log import logger
from ...models.step_state.focus_step import FocusConfig

# Benchmarks only: `--dllm-focus-alpha auto` never switches eviction off (no probation, no fall-back) and its
# α stays at the fixed default, so that its cost (shadow steps, the controller's updates) can be measured
# against fixed α on random weights. There the selection is at chance level: the guard would turn auto into
# delayed cache alone, and α would climb to α_max, comparing different kept sets instead of the cost.
AUTO_COST_ONLY_ENV = 'LMDEPLOY_FOCUS_AUTO_COST_ONLY'


def focus_config(options: FocusOptions) -> FocusConfig | None:
    """``None`` without FOCUS; with ``--dllm-focus-alpha auto`` the controller's configuration rides along."""
    if not options.enable_focus:
        return None
    if not options.auto_alpha:
        return FocusConfig(alpha=options.focus_alpha, policy=options.focus_policy, shadow=options.focus_shadow)
    from .alpha_controller import AlphaControllerConfig
    auto = AlphaControllerConfig.from_options(options)
    if env_switch(AUTO_COST_ONLY_ENV):
        auto = replace(auto, probation=False, min_updates=2**62, alpha_min=auto.alpha_init, alpha_max=auto.alpha_init)
        logger.warning(f'{AUTO_COST_ONLY_ENV}=1: FOCUS alpha auto never stops evicting and keeps alpha '
                       f'{auto.alpha_init} (cost measurements on random weights only; outputs are not guarded).')
    return FocusConfig(alpha=auto.alpha_init, policy=options.focus_policy, shadow=options.focus_shadow, auto=auto,
                       shadow_every=options.focus_auto_shadow_every)
