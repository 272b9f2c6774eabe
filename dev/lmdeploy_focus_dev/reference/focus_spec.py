"""FOCUS for one sequence, written from focus-spec §3 (the oracle's own code; it shares nothing with the
runtime's batched ops in ``lmdeploy_focus.kernels`` or its state in ``lmdeploy_focus.models.step_state``).

Per sequence, on plain Python values; positions are block positions ``0 .. L-1``. Readability over
speed: one sequence at a time, loops where the spec says "for each".
"""
import math
from fractions import Fraction

import torch
from lmdeploy_focus.config.options import FOCUS_POLICIES as POLICIES  # the names only


def importance(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """§3.2: attention mass each candidate receives from the candidates of its sequence, one layer.

    ``q [n, H, d]``, ``k [n, Hkv, d]``: the candidates' queries / keys in ascending block position.
    Returns float32 ``[n]``: ``I(j)`` for ``j = 0 .. n-1`` (fp32 arithmetic, as the spec's kernel; no bf16
    rounding). The step's delta is ``I_1 - I_0`` (§3.3), also in fp32.
    """
    n, num_heads, _ = q.shape
    if n == 0:
        return torch.zeros(0, dtype=torch.float32)
    group = num_heads // k.size(1)
    total = torch.zeros(n, dtype=torch.float32)
    for h in range(num_heads):
        qh = q[:, h].float()
        kh = k[:, h // group].float()
        s = (qh @ kh.T) * scale  # s[i, j]
        pooled = s.clone()
        for j in range(n):  # width-3 max-pool over the key axis; missing neighbours ignored
            if j > 0:
                pooled[:, j] = torch.maximum(pooled[:, j], s[:, j - 1])
            if j < n - 1:
                pooled[:, j] = torch.maximum(pooled[:, j], s[:, j + 1])
        total += torch.softmax(pooled, dim=1).sum(dim=0)  # summed over the queries i
    return total


# The ceiling of §3.4 treats a product within a relative 1e-5 above an integer as that integer. The
# engine must (its fp32 product can land a rounding error above an exact integer, e.g. 2 * 1.5); the
# oracle does the same in exact arithmetic, so that the two agree for any alpha, also the arbitrary
# ones of --dllm-focus-alpha auto, not only where avg * alpha is never that close to an integer.
CEIL_TOLERANCE = Fraction(1, 100_000)


def first_step_average(unmasking_strategy, denoising_steps: int | None, block_length: int) -> int:
    """The decoded average a block starts from (our rule on top of §3.4, which starts every block at 1).

    A static or sequential unmasker decodes a fixed number of tokens a step, ``block_length //
    denoising_steps`` (all steps default to one token each), so a block starts from that number; the
    dynamic unmasker decodes at least one (its forced top-1), the spec's 1.
    """
    name = getattr(unmasking_strategy, 'name', str(unmasking_strategy)).lower()
    if name not in ('low_confidence_static', 'sequential'):
        return 1
    per_step = block_length // (denoising_steps or block_length)
    return min(block_length, max(per_step, 1))


def target(num_candidates: int, decoded_sum: int, decoded_steps: int, alpha: float, first_step: int = 1) -> int:
    """§3.4: ``0`` without candidates, else ``min(n, max(1, ceil(max(avg, 1) * alpha)))`` (exact arithmetic,
    with :data:`CEIL_TOLERANCE`); ``avg`` is ``first_step`` (:func:`first_step_average`) before the block's
    first step that decoded anything.

    ``alpha`` is taken at float32 precision, the precision the engine receives it in.
    """
    if num_candidates <= 0:
        return 0
    avg = Fraction(decoded_sum, decoded_steps) if decoded_steps > 0 else Fraction(first_step)
    alpha32 = Fraction(torch.tensor(alpha, dtype=torch.float32).item())
    return min(num_candidates, max(1, math.ceil(max(avg, Fraction(1)) * alpha32 * (1 - CEIL_TOLERANCE))))


def select(positions: list[int], delta: list[float], target_count: int, progress: int, policy: str) -> set[int]:
    """§3.5 then §3.6: the block positions of the candidates that are kept.

    ``positions``: the candidates' block positions, ascending; ``delta``: their importance deltas
    (unused by ``'leftmost'``); ``progress``: the block progress (-1 at block start).
    """
    if policy not in POLICIES:
        raise ValueError(f'unknown FOCUS policy {policy!r}')
    n = len(positions)
    if n == 0:
        return set()
    ranks = list(range(n))
    if target_count > 0 and n > target_count:  # should_evict
        if policy == 'leftmost':
            chosen = set(ranks[:target_count])
        else:
            exact = [Fraction(d) for d in delta]  # mean / population std compared exactly
            mean = sum(exact) / n
            variance = sum((d - mean)**2 for d in exact) / n
            above = {j for j in ranks if exact[j] >= mean and (exact[j] - mean)**2 >= variance}
            top = set(sorted(ranks, key=lambda j: (-delta[j], j))[:target_count])  # ties: leftmost
            chosen = above if len(above) >= target_count else top
    else:
        chosen = set(ranks)
    # 1. left neighbour, from the selection above (not cascading)
    with_left = set(chosen)
    for j in range(n - 1):
        if (j + 1) in chosen and positions[j + 1] == positions[j] + 1:
            with_left.add(j)
    chosen = with_left
    # 2. never empty
    if not chosen:
        chosen = set(ranks)
    # 3. gap-fill between the progress and the rightmost kept candidate
    rightmost = max(positions[j] for j in chosen)
    chosen |= {j for j in ranks if progress < positions[j] < rightmost}
    return {positions[j] for j in chosen}


def selection_margin(delta: list[float], target_count: int, policy: str) -> float:
    """How far the deltas are from a flip of :func:`select`'s choice: the smallest distance of a delta to the
    "above" threshold ``mean + std`` and the gap between the ``target_count``-th and next largest delta
    (``inf`` where the deltas decide nothing: leftmost, or no eviction). Two candidates are the exception: the
    larger one is ``mean + std`` exactly, and both rules keep it, so only their gap counts. Tests comparing a
    float32 engine with this fp64 oracle redraw inputs whose margin rounding could cross."""
    n = len(delta)
    if policy != 'importance' or not 0 < target_count < n:
        return math.inf
    ranked = sorted(delta, reverse=True)
    gap = ranked[target_count - 1] - ranked[target_count]
    if n == 2:
        return gap
    mean = sum(delta) / n
    threshold = mean + math.sqrt(sum((d - mean)**2 for d in delta) / n)
    return min(gap, min(abs(d - threshold) for d in delta))
