"""FOCUS's settings for a decode step (what it decides lives in ``models.sparse_step.FocusOutcome``)."""
from dataclasses import dataclass

from ...config.options import DEFAULT_AUTO_SHADOW_EVERY


@dataclass(frozen=True)
class FocusConfig:
    alpha: float
    policy: str  # 'importance' | 'leftmost'
    shadow: bool  # compute the selection, evict nothing
    eviction_layer: int = 1  # importance at layers 0 and 1, eviction inside layer 1 (spec §3.1)
    tp_size: int | None = None  # attention TP ranks the importance delta is summed over (None: ask lmdeploy)
    # --dllm-focus-alpha auto (an AlphaControllerConfig): α comes per sequence in StepInputs.alpha and some
    # sequences run the step in shadow (StepInputs.shadow_seq); ``alpha`` is then the controller's start value
    auto: object = None
    shadow_every: int = DEFAULT_AUTO_SHADOW_EVERY  # auto: one step in N of each sequence in shadow mode

    @property
    def needs_importance(self) -> bool:
        return self.policy == 'importance'
