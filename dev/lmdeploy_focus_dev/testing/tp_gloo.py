"""FOCUS selection under tensor parallelism on CPU: ranks are processes on the gloo backend.

Each rank scores the masked candidates with its share of the attention heads (``masked_importance``,
the torch path of :mod:`lmdeploy_focus.kernels.focus_ops`), sums the delta over the ranks with the
engine's own reduction (:func:`~lmdeploy_focus.models.importance_reduce.reduce_importance_delta`,
given the gloo group instead of lmdeploy's attention TP group), then runs the selection and the
compaction. The workers live here (not in the test module) so that ``torch.multiprocessing``'s
spawned children can import them.

Exact test data: ``masked_importance`` works in fp32 whatever the input dtype, and an fp32 sum over
heads split across ranks is added in another order than over all heads at once, so with generic
data the two deltas may differ in the last bit and a near-tie could then be broken differently.
:func:`random_step` therefore builds q/k whose softmax rows are exact: a candidate's logits are 0
at the keys it attends to and -250 elsewhere (``exp(-250)`` is 0 in fp32), arranged so that after
the width-3 max-pool 1, 2 or 4 keys share the maximum. Every probability is then 1, 1/2 or 1/4,
every per-head importance a multiple of 1/4, and every sum of them, in any order, exact: the
reduced delta equals the single-process delta bit for bit, so the kept sets must be identical
(ties included, and the data has many). The data is otherwise random: ragged sequences, processed
subsets of the block, candidates, progress, history, running averages.
"""
import os
import secrets
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmdeploy_focus.kernels import focus_ops
from lmdeploy_focus.models import tp_layout_check
from lmdeploy_focus.models.importance_reduce import reduce_importance_delta

HEADS, KV_HEADS, HEAD_DIM = 8, 4, 16
SCALE = HEAD_DIM**-0.5  # 0.25: logits -1000 * 0.25 = -250
LOW = -1000.0
ALPHA = 1.5


@dataclass
class Step:
    """One decode step's FOCUS inputs, all heads (rank ``r`` of ``n`` takes heads ``r*H/n .. (r+1)*H/n - 1``)."""
    q: list  # per layer (0, 1): [N, HEADS, HEAD_DIM]
    k: list  # per layer: [N, KV_HEADS, HEAD_DIM]
    q_start_loc: torch.Tensor
    q_seqlens: torch.Tensor
    candidate: torch.Tensor
    block_pos: torch.Tensor
    history: torch.Tensor
    progress: torch.Tensor
    avg_decoded: torch.Tensor
    block_length: int


def random_step(gen: torch.Generator, batch: int = 5, block_length: int = 16, exact: bool = True) -> Step:
    """Random ragged step; ``exact``: q/k with exactly representable importances (module docstring)."""
    L = block_length

    def randint(low, high, size=()):
        return torch.randint(low, high, size, generator=gen)

    seqlens = [int(randint(0, L + 1)) if b else L for b in range(batch)]  # the first one whole
    positions, candidate = [], []
    for n in seqlens:
        positions.append(torch.randperm(L, generator=gen)[:n].sort().values)
        candidate.append(torch.rand(n, generator=gen) < 0.75)
    num_padding = int(randint(0, L))
    block_pos = torch.cat(positions + [torch.zeros(num_padding, dtype=torch.long)])
    cand = torch.cat(candidate + [torch.zeros(num_padding, dtype=torch.bool)])
    q_seqlens = torch.tensor(seqlens)
    q_start_loc = q_seqlens.cumsum(0) - q_seqlens
    num_rows = block_pos.numel()
    qs, ks = [], []
    for _ in range(2):  # layers 0 and 1
        q = torch.randn(num_rows, HEADS, HEAD_DIM, generator=gen)
        k = torch.randn(num_rows, KV_HEADS, HEAD_DIM, generator=gen)
        if exact:
            _exact_candidate_logits(q, k, q_start_loc, q_seqlens, cand, gen)
        qs.append(q)
        ks.append(k)
    return Step(q=qs, k=ks, q_start_loc=q_start_loc, q_seqlens=q_seqlens, candidate=cand, block_pos=block_pos,
                history=randint(0, 200, (batch, )) * L, progress=randint(-1, L, (batch, )),
                avg_decoded=torch.rand(batch, generator=gen) * 4, block_length=L)


def _exact_candidate_logits(q, k, q_start_loc, q_seqlens, cand, gen) -> None:
    """Candidate j's key is the unit vector of its candidate rank; a candidate query holds 0 at the ranks it
    attends to, LOW elsewhere: 1 key (n = 1), a block end (2 keys share the pooled max) or, for n >= 4, an
    adjacent interior pair ``a, a+1`` with ``1 <= a <= n-3`` (4 keys share it)."""
    for start, length in zip(q_start_loc.tolist(), q_seqlens.tolist()):
        rows = [start + i for i in range(length) if cand[start + i]]
        n = len(rows)
        for rank, row in enumerate(rows):
            k[row] = 0.0
            k[row, :, rank] = 1.0
        for row in rows:
            for head in range(HEADS):
                targets = _attended(n, gen)
                q[row, head] = 0.0
                q[row, head, :n] = LOW
                q[row, head, targets] = 0.0


def _attended(n: int, gen) -> list[int]:
    if n == 1:
        return [0]
    if n >= 4 and torch.rand((), generator=gen) < 0.6:
        a = int(torch.randint(1, n - 2, (), generator=gen))
        return [a, a + 1]
    return [0] if torch.rand((), generator=gen) < 0.5 else [n - 1]


def local_delta(step: Step, heads: slice, kv_heads: slice) -> torch.Tensor:
    """Importance delta (layer 1 - layer 0) over the given heads, as ``sparse_step.front`` computes it."""

    def importance(layer):
        return focus_ops.masked_importance(step.q[layer][:, heads], step.k[layer][:, kv_heads], step.q_start_loc,
                                           step.q_seqlens, step.candidate, SCALE, max_q_len=step.block_length)

    return importance(1) - importance(0)


def rank_heads(rank: int, world: int) -> tuple[slice, slice]:
    h, kvh = HEADS // world, KV_HEADS // world
    return slice(rank * h, (rank + 1) * h), slice(rank * kvh, (rank + 1) * kvh)


def select(step: Step, delta: torch.Tensor):
    """Targets, selection and kept layout (``sparse_step.front``'s order): ``(keep, layout)``."""
    num_candidates = focus_ops.count_candidates(step.candidate, step.q_start_loc, step.q_seqlens)
    targets = focus_ops.focus_targets(num_candidates, step.avg_decoded, ALPHA)
    keep = focus_ops.select_kept(delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, targets,
                                 step.progress, policy='importance', max_q_len=step.block_length)
    layout = focus_ops.kept_layout(keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history,
                                   step.progress, max_q_len=step.block_length)
    return keep, layout


def layouts_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name))
               for name in ('src_row', 'q_seqlens', 'q_start_loc', 'total', 'kv_seqlens', 'rightmost', 'progress'))


# ---- spawning -------------------------------------------------------------------------------------


def spawn(worker, *args, world_size: int = 2) -> None:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` processes joined in a gloo group (the
    default group); a failure in any rank is raised here with the rank's traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        init = f'file://{os.path.join(tmp, "rendezvous")}'
        mp.spawn(_entry, args=(world_size, init, worker, args), nprocs=world_size, join=True)


def _entry(rank: int, world_size: int, init: str, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world_size)
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def new_seed() -> int:
    return secrets.randbits(31)


# ---- workers --------------------------------------------------------------------------------------


def selection_matches_one_process(rank: int, world: int, seed: int, trials: int) -> None:
    """Every rank: the all-reduced delta equals the all-heads delta bit for bit, and the kept set and
    layout equal one process's over all heads."""
    gen = torch.Generator().manual_seed(seed)
    group = dist.group.WORLD
    heads, kv_heads = rank_heads(rank, world)
    evicting = 0
    for trial in range(trials):
        where = f'seed {seed} trial {trial} rank {rank}/{world}'
        step = random_step(gen)
        full = local_delta(step, slice(None), slice(None))
        delta = reduce_importance_delta(local_delta(step, heads, kv_heads), group=group)
        assert torch.equal(delta, full), f'{where}: reduced delta != all-heads delta: {(delta - full).abs().max()}'
        keep_full, layout_full = select(step, full)
        keep, layout = select(step, delta)
        assert torch.equal(keep, keep_full), f'{where}: kept sets differ'
        assert layouts_equal(layout, layout_full), f'{where}: kept layouts differ'
        owned = int(step.q_seqlens.sum())
        evicting += int(layout.total) < owned
    assert evicting >= trials // 2, f'seed {seed}: only {evicting} of {trials} steps evicted anything'


def layout_check(rank: int, world: int, seed: int) -> None:
    """The divergence detector on generic (non-exact) data, deltas all-reduced over gloo: steps 1 and 2 run
    as the engine would (no rank may raise); on step 3 rank 1 negates its reduced delta (a step drawn so that
    this changes its layout): every rank must raise a RuntimeError naming step 3."""
    gen = torch.Generator().manual_seed(seed)
    group = dist.group.WORLD
    heads, kv_heads = rank_heads(rank, world)
    planted = 3
    for step_no in (1, 2, planted):
        while True:  # identical on every rank: each draws the same data and decides on the whole of it
            step = random_step(gen, exact=False)
            full = local_delta(step, slice(None), slice(None))
            if step_no != planted or not layouts_equal(select(step, full)[1], select(step, -full)[1]):
                break
        delta = reduce_importance_delta(local_delta(step, heads, kv_heads), group=group)
        if step_no == planted and rank == 1:
            delta = -delta
        checks = tp_layout_check.all_ranks_checksums(select(step, delta)[1], group=group)
        assert checks is not None
        where = f'seed {seed} rank {rank}/{world} step {step_no}'
        try:
            tp_layout_check.verify(checks)  # counts the steps: 1, 2, 3 in this process
        except RuntimeError as error:
            assert step_no == planted, f'{where}: unexpected {error}'
            assert f'decode step {step_no} ' in str(error) and tp_layout_check.ENV in str(error), str(error)
        else:
            assert step_no != planted, f'{where}: the planted divergence was not detected ({checks.tolist()})'
