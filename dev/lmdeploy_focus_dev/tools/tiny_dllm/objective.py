"""Block-diffusion training objective: attention masks, noising, 1/t-weighted masked CE.

All blocks of a sequence train at once with the two-copy layout: the model reads
``[noisy x_t (N) | clean x_0 (N)]`` (positions ``0..N-1`` twice) under :func:`block_diffusion_mask`:

* a noisy query of block ``b`` sees the noisy keys of block ``b`` (bidirectional inside the block)
  and the clean keys of blocks ``< b``: exactly what a decode step of block ``b`` sees at inference
  (the current block as it is, plus the committed history);
* a clean query of block ``b`` sees the clean keys of blocks ``<= b`` (block-causal, as the
  engine's prefill and commit passes compute the history's K/V) and never a noisy key.

Noise: per (sequence, block) a level ``t ~ U(eps, 1)`` (stratified over the batch for lower
variance); each trained position of the block is replaced by the mask token with probability
``t``. Loss of a sequence: ``sum over masked positions of CE / t``, divided by its number of trained
positions (so each sequence weighs the same: tasks and text stay balanced whatever their lengths);
the batch loss is the mean over sequences.
"""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

DEFAULT_EPS = 1e-3


def block_ids(n: int, block_length: int, device=None) -> torch.Tensor:
    return torch.arange(n, device=device) // block_length


def block_causal_mask(n: int, block_length: int, device=None) -> torch.Tensor:
    """``[n, n]`` bool: query ``i`` sees key ``j`` iff ``block(j) <= block(i)``."""
    b = block_ids(n, block_length, device)
    return b[None, :] <= b[:, None]


def block_diffusion_mask(n: int, block_length: int, device=None) -> torch.Tensor:
    """``[2n, 2n]`` bool over ``[noisy | clean]`` (see the module docstring)."""
    b = block_ids(n, block_length, device)
    same = b[None, :] == b[:, None]
    earlier = b[None, :] < b[:, None]
    top = torch.cat([same, earlier], dim=1)  # noisy queries: noisy keys | clean keys
    bottom = torch.cat([torch.zeros_like(same), same | earlier], dim=1)  # clean queries
    return torch.cat([top, bottom], dim=0)


def stratified_levels(count: int, generator: torch.Generator, eps: float) -> torch.Tensor:
    """``count`` noise levels in ``(eps, 1)``: one uniform draw per equal-width stratum, shuffled."""
    u = (torch.arange(count, dtype=torch.float64) + torch.rand(count, generator=generator, dtype=torch.float64)) / count
    return (eps + (1 - eps) * u[torch.randperm(count, generator=generator)]).float()


@dataclass
class Noise:
    masked: torch.Tensor  # bool [B, N]
    level: torch.Tensor  # float [B, N]: t of the position's block


def sample_noise(trained: torch.Tensor, block_length: int, generator: torch.Generator,
                 eps: float = DEFAULT_EPS) -> Noise:
    """Noise for ``trained [B, N]`` (CPU generator: the same on every device)."""
    B, N = trained.shape
    levels = stratified_levels(B * (N // block_length), generator, eps).view(B, -1)
    level = levels.repeat_interleave(block_length, dim=1)
    masked = (torch.rand(B, N, generator=generator) < level) & trained
    return Noise(masked, level)


@dataclass
class LossParts:
    loss: torch.Tensor  # the optimised 1/t-weighted loss (scalar)
    masked_ce: torch.Tensor  # plain mean CE over masked positions (diagnostic, scalar)
    num_masked: torch.Tensor  # scalar


def diffusion_logits(model, clean: torch.Tensor, noisy: torch.Tensor, block_length: int,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits ``[B, N, V]`` of the noisy copy under the two-copy layout."""
    N = clean.size(1)
    if mask is None:
        mask = block_diffusion_mask(N, block_length, clean.device)
    positions = torch.arange(N, device=clean.device).repeat(2)
    return model(torch.cat([noisy, clean], dim=1), positions, mask, logits_rows=slice(0, N))


def diffusion_loss(model, ids: torch.Tensor, trained: torch.Tensor, noise: Noise, mask_token_id: int,
                   block_length: int, mask: torch.Tensor | None = None) -> LossParts:
    noisy = torch.where(noise.masked, mask_token_id, ids)
    logits = diffusion_logits(model, ids, noisy, block_length, mask)
    ce = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten(), reduction='none').view_as(ids)
    masked = noise.masked.float()
    per_sequence = (ce * masked / noise.level).sum(dim=1) / trained.sum(dim=1).clamp(min=1)
    num_masked = masked.sum()
    return LossParts(loss=per_sequence.mean(), masked_ce=(ce * masked).sum() / num_masked.clamp(min=1),
                     num_masked=num_masked)
