"""Which sequences run the current decode step in shadow mode under ``--dllm-focus-alpha auto``.

Each sequence measures one step in ``period``: a per-sequence countdown on the device, 0 = this step
is a shadow step. The countdown of the ``i``-th sequence to join the engine starts at
``(seed + i) % period``, so consecutive sequences measure on consecutive steps: at any step about
``B / period`` sequences of the batch are in shadow, an even load instead of the whole batch every
``period`` steps. Deterministic for a given seed and join order.

The countdown runs across blocks (it is not reset at a commit): most blocks take fewer steps than a
period, and a per-block restart would measure the same within-block step of every block.

Lifecycle follows the other per-sequence step state (fresh on join, select on reindex); every
function returns new tensors, no host sync.
"""
import torch


def fresh(num_new: int, period: int, seed: int, first_index: int, device=None) -> torch.Tensor:
    """int64 [num_new]: the countdowns of sequences ``first_index ..`` of the engine's join order."""
    index = torch.arange(first_index, first_index + num_new, dtype=torch.long, device=device)
    return (index + seed) % period


def tick(countdown: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool [B]: shadow this step, int64 [B]: the countdowns for the next step)."""
    shadow = countdown <= 0
    return shadow, torch.where(shadow, countdown.new_full((), period - 1), countdown - 1)
