"""``--dllm-focus-alpha auto`` on the reference decode loop.

Drives the runtime's own controller (``strategies/dllm/alpha_controller``) and shadow schedule
(``models/step_state/shadow_schedule``), both pure functions of tensors, from the loop's per-sequence
selection counts, with the engine's timing: the schedule ticks once per decode step for every
running sequence, the shadow sequences select with the controller's α and evict nothing, the others
use that α too (or keep every candidate while the controller has fallen back), and the controller
folds in the shadow sequences' counts after the step's unmasking.

This is not an independent oracle of the controller (``tests/test_alpha_controller.py`` checks that
against scripted recalls); it lets the replay tests check the engine's wiring of ``auto`` and lets
the quality evaluation measure, on CPU, what auto's decisions do to a model's outputs. One object
lives as long as an engine would: its state carries over from one ``reference_generate`` batch to
the next, and sequences join the schedule in order, as they would join the engine.
"""
import torch

from lmdeploy_focus.models.step_state import shadow_schedule
from lmdeploy_focus.strategies.dllm import alpha_controller


class ReferenceAutoAlpha:

    def __init__(self, focus, block_length: int, seed: int = 0):
        """``focus``: a ``FocusConfig`` with ``auto`` (an ``AlphaControllerConfig``) and ``shadow_every``."""
        if getattr(focus, 'auto', None) is None:
            raise ValueError('ReferenceAutoAlpha needs a FocusConfig with auto= (the controller configuration)')
        self.config = focus.auto
        self.period = focus.shadow_every
        self.block_length = block_length
        self.seed = seed
        self.state = alpha_controller.initial_state(self.config)
        self.joined = 0  # sequences that joined so far (the schedule's join order)
        self.countdown = None
        self.shadow = None  # bool [B]: this step's shadow sequences
        self.shadow_steps = 0  # sequence-steps run in shadow
        self.fallback_steps = 0  # non-shadow sequence-steps run without eviction because of a fall-back

    def join(self, batch_size: int) -> None:
        """A new batch of sequences enters (one ``reference_generate`` call)."""
        self.countdown = shadow_schedule.fresh(batch_size, self.period, self.seed, self.joined)
        self.joined += batch_size

    def step_settings(self, running: torch.Tensor) -> tuple[list[float], list[bool]]:
        """Per sequence, this decode step's α and whether it runs in shadow (``running``: bool [B])."""
        shadow, countdown = shadow_schedule.tick(self.countdown, self.period)
        self.countdown = torch.where(running, countdown, self.countdown)  # a finished sequence left the engine
        self.shadow = shadow & running
        alphas = alpha_controller.step_alpha(self.state, self.shadow, float(self.block_length))
        self.shadow_steps += int(self.shadow.sum())
        self.fallback_steps += int((self.state.fallback & running & ~self.shadow).sum())
        return alphas.tolist(), self.shadow.tolist()

    def after_step(self, counts: list) -> None:
        """Fold the step's ``SelectionCounts`` (one per sequence, None where it took no FOCUS step) of the
        shadow sequences into the controller."""
        columns = [[0.0, 0.0, 0.0] if c is None or not s else
                   [c.scored_decoded, c.scored_selected_decoded, c.scored_random_expected]
                   for c, s in zip(counts, self.shadow.tolist())]
        decoded, selected, random = torch.tensor(columns, dtype=torch.float32).unbind(-1)
        self.state = alpha_controller.update(self.state, self.config, decoded, selected, random)

    def report(self) -> dict:
        """The controller's end state and the step counts (host values, for results files)."""
        return {**alpha_controller.host_report(self.state), 'shadow_steps': self.shadow_steps,
                'fallback_steps': self.fallback_steps}
