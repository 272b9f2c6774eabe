"""``--dllm-focus-alpha auto``: the controller's per-step update as one CUDA graph replay.

:func:`.alpha_controller.update` is ~45 elementwise ops on 0-d tensors. Run eagerly, each is a host dispatch: on
the 5M model's api_server the update took ~0.9 ms of the engine thread a step
(``benchmark/results/2026-12-06_h100_eager_cut_check/``), where the whole step's host work is ~10 ms. Captured once
at the engine's decode warm-up (beside the step graphs, in their memory pool), a step costs the three sums of its
shadow counts and one replay. The state lives in fixed tensors that the replay updates in place; the replayed
function is :func:`.alpha_controller.update` itself, so graph and eager updates are the same arithmetic. Without
CUDA (the CPU tests) the same in-place update runs eagerly.
"""
from dataclasses import fields

import torch

from . import alpha_controller
from .alpha_controller import AlphaControllerConfig, AlphaControllerState


class GraphedController:
    """The controller's state in fixed tensors and its update as one replay (``replayable(fn)``: a CUDA graph of
    ``fn`` sharing the step graphs' pool, or ``fn`` itself where graphs are not used)."""

    def __init__(self, config: AlphaControllerConfig, device, replayable, state: AlphaControllerState | None = None):
        self.config = config
        # normal tensors even when the warm-up runs under inference mode: updated in place wherever the step runs
        with torch.inference_mode(False):
            self.state = alpha_controller.initial_state(config, device)
            # the step's sums of decoded, selected-and-decoded and random-expected tokens (float32, as update sums)
            self.sums = torch.zeros(3, dtype=torch.float32, device=device)
        if state is not None:  # the controller so far (a re-capture after a graph reset): carried over
            self._adopt(state)
        # the replayable's warm-up run sees zero sums: no evidence, so the state is left as it is
        self._replay = replayable(self._update_in_place)

    def _update_in_place(self) -> None:
        self._adopt(alpha_controller.update(self.state, self.config, *self.sums.unbind()))

    def _adopt(self, state: AlphaControllerState) -> None:
        """Copy ``state`` into the fixed tensors."""
        for f in fields(state):
            getattr(self.state, f.name).copy_(getattr(state, f.name))

    def update(self, state: AlphaControllerState, decoded: torch.Tensor, selected: torch.Tensor,
               random: torch.Tensor) -> AlphaControllerState:
        """:func:`.alpha_controller.update` of ``state`` by one step's counts (any shape, summed), in place.

        Returns the fixed state (``self.state``); a ``state`` that is not it (set from outside) is copied in first.
        """
        if state is not self.state:
            self._adopt(state)
        torch.stack([x.to(torch.float32).sum() for x in (decoded, selected, random)], out=self.sums)
        self._replay.replay()
        return self.state
