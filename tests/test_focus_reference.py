"""The FOCUS torch reference against brute force, and the spec's worked examples (spec §3.2–3.9).

The brute-force versions below loop over sequences and candidates in plain Python, in float64
(importance) or exact fractions (the μ+σ rule), straight from the spec's wording. Inputs are fresh
random every run; failures print the seed. Rows no sequence owns and non-candidate rows hold
garbage (NaN, random flags) that must never leak into the results.
"""
import math
import secrets
from fractions import Fraction

import numpy as np
import pytest
import torch

from lmdeploy_focus.kernels import focus_ops
from lmdeploy_focus.kernels.default import focus as ref
from lmdeploy_focus.config.options import FOCUS_POLICIES


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


def randint(gen, low, high):
    """Uniform int in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


class Step:
    """A random ragged decode step: sequences packed in batch order with padding rows between them."""

    def __init__(self, gen, batch, block_len, *, max_gap=2, quantised=False):
        self.block_len = block_len
        q_lens = [[0, 1, randint(gen, 1, block_len), block_len][randint(gen, 0, 3)] for _ in range(batch)]
        starts, row = [], 0
        for q_len in q_lens:
            row += randint(gen, 0, max_gap)
            starts.append(row)
            row += q_len
        num_rows = row + randint(gen, 0, max_gap)
        self.q_start_loc = torch.tensor(starts, dtype=torch.int64)
        self.q_seqlens = torch.tensor(q_lens, dtype=torch.int64)
        self.num_rows = num_rows
        self.owned = torch.zeros(num_rows, dtype=torch.bool)
        # padding rows: random positions and flags, NaN deltas
        self.block_pos = torch.randint(0, block_len, (num_rows, ), generator=gen)
        self.candidate = torch.rand(num_rows, generator=gen) < 0.5
        for start, q_len in zip(starts, q_lens):
            self.owned[start:start + q_len] = True
            self.block_pos[start:start + q_len] = torch.randperm(block_len, generator=gen)[:q_len].sort().values
            # per sequence: no candidates, some, or all
            share = [0.0, 0.6, 1.0][randint(gen, 0, 2)]
            self.candidate[start:start + q_len] = torch.rand(q_len, generator=gen) < share
        if quantised:  # a coarse grid: many ties, exact sums
            delta = torch.randint(-4, 5, (num_rows, ), generator=gen).float() / 4
        else:
            delta = torch.randn(num_rows, generator=gen) * 3
        self.delta = torch.where(self.candidate & self.owned, delta, float('nan'))
        self.progress = torch.randint(-1, block_len, (batch, ), generator=gen)
        self.history = torch.randint(0, 500, (batch, ), generator=gen)
        self.num_candidates = ref.count_candidates(self.candidate, self.q_start_loc, self.q_seqlens)
        # targets: mostly small (ceil(alpha * avg) as in practice), sometimes anything in 0 .. n + 1
        small = torch.randint(1, 4, (batch, ), generator=gen)
        anything = (torch.rand(batch, generator=gen) * (self.num_candidates + 2)).long()
        self.targets = torch.where(torch.rand(batch, generator=gen) < 0.7, small, anything)

    def sequences(self):
        """(b, [owned rows of b])."""
        for b, (start, q_len) in enumerate(zip(self.q_start_loc.tolist(), self.q_seqlens.tolist())):
            yield b, list(range(start, start + q_len))


# ----------------------------------------------------------------------------------------------
# brute force, straight from the spec


def brute_target(n, avg, alpha):
    """Spec §3.4 on the exact product of the fp32 inputs; within a relative 1e-5 above an integer
    counts as that integer (the reference's documented choice)."""
    if n <= 0:
        return 0
    product = Fraction(float(np.float32(max(avg, 1.0)))) * Fraction(float(np.float32(alpha)))
    whole = math.floor(product)
    wanted = whole if product - whole <= product * Fraction(1, 10**5) else whole + 1
    return min(n, max(1, wanted))


def brute_importance(q, k, step, scale):
    group = q.size(1) // k.size(1)
    out = [0.0] * step.num_rows
    for _, rows in step.sequences():
        cands = [r for r in rows if step.candidate[r]]
        n = len(cands)
        for h in range(q.size(1)):
            qh = q[cands, h].double()
            kh = k[cands, h // group].double()
            logits = (qh @ kh.T * scale).tolist()
            for i in range(n):
                row = logits[i]
                pooled = [max(row[max(j - 1, 0):j + 2]) for j in range(n)]  # missing neighbours ignored
                top = max(pooled)
                weights = [math.exp(x - top) for x in pooled]
                for j in range(n):
                    out[cands[j]] += weights[j] / sum(weights)
    return torch.tensor(out, dtype=torch.float64)


def brute_select(step, policy):
    keep = [False] * step.num_rows
    for b, rows in step.sequences():
        pos = {r: int(step.block_pos[r]) for r in rows}
        cands = [r for r in rows if step.candidate[r]]
        for r in rows:
            keep[r] = not step.candidate[r]
        n, target = len(cands), int(step.targets[b])
        if target > 0 and n > target:
            if policy == 'leftmost':
                kept = set(cands[:target])
            else:
                d = [Fraction(float(step.delta[r])) for r in cands]
                top = {cands[j] for j in sorted(range(n), key=lambda j: (-d[j], j))[:target]}
                mean = sum(d) / n
                var = sum((x - mean)**2 for x in d) / n
                above = {cands[j] for j in range(n) if d[j] >= mean and (d[j] - mean)**2 >= var}
                kept = above if len(above) >= target else top
        else:
            kept = set(cands)
        kept |= {cands[j] for j in range(n - 1) if cands[j + 1] in kept and pos[cands[j + 1]] == pos[cands[j]] + 1}
        if not kept:
            kept = set(cands)
        if kept:
            right = max(pos[r] for r in kept)
            kept |= {r for r in cands if int(step.progress[b]) < pos[r] < right}
        for r in kept:
            keep[r] = True
    return torch.tensor(keep)


def brute_layout(step, keep):
    kept_rows, others, counts, rightmost, kv, progress = [], [], [], [], [], []
    for b, rows in step.sequences():
        kept = [r for r in rows if keep[r]]
        kept_rows += kept
        counts.append(len(kept))
        right = int(step.block_pos[kept[-1]]) if kept else -1
        prog = int(step.progress[b])
        rightmost.append(right)
        kv.append(int(step.history[b]) + max(prog, right) + 1)  # up to the new progress (deep K/V written)
        progress.append(max(prog, right))
    others = [r for r in range(step.num_rows) if r not in set(kept_rows)]
    starts = [sum(counts[:b]) for b in range(len(counts))]
    return dict(src_row=kept_rows + others,
                q_seqlens=counts,
                q_start_loc=starts,
                total=sum(counts),
                kv_seqlens=kv,
                rightmost=rightmost,
                progress=progress)


# ----------------------------------------------------------------------------------------------
# targets


@pytest.mark.parametrize(
    'n, avg, alpha, expected',
    [
        (8, 1.0, 1.5, 2),  # first step of a block: ceil(alpha)
        (8, 2.0, 1.5, 3),  # exact product 3.0
        (8, float(np.nextafter(np.float32(2.0), np.float32(3.0))), 1.5, 3),  # 3.0000002: no bump
        (8, 7 / 3, 1.5, 4),  # 3.4999998 or 3.5 in fp32
        (8, 1.0, 1.0001, 2),  # a real fraction of 1e-4 still rounds up
        (8, 1.0, 1.0, 1),
        (8, 0.25, 1.5, 2),  # avg below 1 counts as 1
        (8, 10.0, 2.0, 8),  # capped by the candidates
        (1, 5.0, 1.5, 1),
        (0, 3.0, 1.5, 0),  # commit step: nothing masked
        (-1, 3.0, 1.5, 0),
    ])
def test_targets_examples(n, avg, alpha, expected):
    got = ref.focus_targets(torch.tensor([n]), torch.tensor([avg], dtype=torch.float32), alpha)
    assert got.dtype == torch.int64
    assert got.tolist() == [expected]


def test_targets_match_brute_force(gen):
    batch = 512
    n = torch.randint(-1, 65, (batch, ), generator=gen)
    # running averages of decoded counts over 1..64 steps of a block
    avg = (torch.randint(1, 200, (batch, ), generator=gen).float() / torch.randint(1, 65, (batch, ), generator=gen))
    for alpha in (1.0, 1.1, 1.25, 1.5, 2.0, 3.3):
        got = ref.focus_targets(n, avg, alpha).tolist()
        expected = [brute_target(int(a), float(b), alpha) for a, b in zip(n, avg)]
        assert got == expected, f'alpha={alpha} seed={gen.initial_seed()}'


def test_oracle_targets_agree_with_the_runtime_for_any_alpha(gen):
    """The oracle (``focus_spec.target``, exact fractions) and the runtime (fp32 product) under arbitrary α,
    as ``--dllm-focus-alpha auto`` produces: both apply the same tolerance above an integer, so they agree,
    also where avg * α lands a hair above or below an integer (half the cases here)."""
    from lmdeploy_focus_dev.reference import focus_spec
    batch = 2048
    n = torch.randint(1, 65, (batch, ), generator=gen)
    steps = torch.randint(1, 33, (batch, ), generator=gen)
    decoded = torch.randint(1, 65, (batch, ), generator=gen)
    avg = decoded.float() / steps.float()  # the runtime's running average (FocusState.avg_decoded)
    alphas = 1 + 3 * torch.rand(batch, generator=gen, dtype=torch.float64)
    # near an integer: alpha = m / avg * (1 + delta), |delta| <= 5e-6, inside the tolerance band or just below
    m = (avg.double() * alphas).ceil()
    near = m / avg.double() * (1 + 1e-5 * (torch.rand(batch, generator=gen, dtype=torch.float64) - 0.5))
    alphas = torch.where(torch.arange(batch) % 2 == 0, near, alphas).clamp(min=1.0).tolist()
    for j in range(batch):
        got = int(ref.focus_targets(n[j:j + 1], avg[j:j + 1], alphas[j]))
        want = focus_spec.target(int(n[j]), int(decoded[j]), int(steps[j]), alphas[j])
        assert got == want, f'n {int(n[j])} avg {int(decoded[j])}/{int(steps[j])} alpha {alphas[j]!r} seed={gen.initial_seed()}'


# ----------------------------------------------------------------------------------------------
# importance


def random_qk(gen, step, heads, kv_heads, head_dim, dtype):
    q = torch.randn(step.num_rows, heads, head_dim, generator=gen).to(dtype).float()
    k = torch.randn(step.num_rows, kv_heads, head_dim, generator=gen).to(dtype).float()
    unused = ~(step.owned & step.candidate)
    q[unused] = float('nan')  # must never be read
    k[unused] = float('nan')
    return q, k


@pytest.mark.parametrize('group', [1, 2, 4])
@pytest.mark.parametrize('block_len', [8, 16, 24])
def test_importance_matches_brute_force(gen, block_len, group):
    step = Step(gen, randint(gen, 1, 6), block_len)
    q, k = random_qk(gen, step, 2 * group, 2, 32, torch.bfloat16)
    scale = 1 / math.sqrt(32) * 3  # sharper than random unit vectors give
    got = ref.masked_importance(q, k, step.q_start_loc, step.q_seqlens, step.candidate, scale, max_q_len=block_len)
    assert got.dtype == torch.float32
    expected = brute_importance(q, k, step, scale).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5, msg=lambda m: f'{m}\nseed={gen.initial_seed()}')


def test_importance_totals_and_zeros(gen):
    """Each sequence's importances sum to H * n; non-candidates and padding rows are exactly 0."""
    step = Step(gen, 12, 16)
    heads = 8
    q, k = random_qk(gen, step, heads, 2, 16, torch.float32)
    got = ref.masked_importance(q, k, step.q_start_loc, step.q_seqlens, step.candidate, 0.25)
    counted = step.owned & step.candidate
    assert (got[~counted] == 0).all()
    assert (got[counted] > 0).all()
    for b, rows in step.sequences():
        assert float(got[rows].sum()) == pytest.approx(heads * int(step.num_candidates[b]), rel=1e-5)


def test_importance_ignores_non_candidates_between_candidates(gen):
    """Neighbours of the max-pool are the previous / next *candidate*: interleaving non-candidate
    rows changes nothing (same as running on the candidates alone)."""
    n = 9
    q = torch.randn(n, 4, 16, generator=gen)
    k = torch.randn(n, 2, 16, generator=gen)
    lens = torch.tensor([n])
    alone = ref.masked_importance(q, k, torch.tensor([0]), lens, torch.ones(n, dtype=torch.bool), 0.5)
    # spread the same candidates over 2n rows with non-candidates between them
    sparse_q = torch.randn(2 * n, 4, 16, generator=gen)
    sparse_k = torch.randn(2 * n, 2, 16, generator=gen)
    sparse_q[1::2], sparse_k[1::2] = q, k
    cand = torch.zeros(2 * n, dtype=torch.bool)
    cand[1::2] = True
    spread = ref.masked_importance(sparse_q, sparse_k, torch.tensor([0]), torch.tensor([2 * n]), cand, 0.5)
    torch.testing.assert_close(spread[1::2], alone)
    assert (spread[0::2] == 0).all()
    # and the pool does matter: without it the result differs
    assert not torch.allclose(alone, _importance_without_pool(q, k, 0.5), atol=1e-3)


def _importance_without_pool(q, k, scale):
    kk = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    probs = torch.softmax(torch.einsum('ihd,jhd->hij', q, kk) * scale, dim=-1)
    return probs.sum(dim=(0, 1))


def test_importance_single_candidate_gets_all_heads(gen):
    q = torch.randn(3, 4, 8, generator=gen)
    k = torch.randn(3, 1, 8, generator=gen)
    got = ref.masked_importance(q, k, torch.tensor([0]), torch.tensor([3]), torch.tensor([False, True, False]), 1.0)
    assert got.tolist() == [0.0, 4.0, 0.0]


def test_importance_is_sum_over_head_shards(gen):
    """Tensor parallelism: importance of each rank's heads, summed (all-reduce), is the full one."""
    step = Step(gen, 8, 32)
    q, k = random_qk(gen, step, 8, 4, 16, torch.float32)
    args = (step.q_start_loc, step.q_seqlens, step.candidate, 0.25)
    full = ref.masked_importance(q, k, *args)
    ranks = [ref.masked_importance(q[:, 4 * r:4 * r + 4], k[:, 2 * r:2 * r + 2], *args) for r in range(2)]
    torch.testing.assert_close(ranks[0] + ranks[1], full, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize('quantised', [False, True])
@pytest.mark.parametrize('policy', FOCUS_POLICIES)
@pytest.mark.parametrize('block_len', [8, 16, 24, 64])
def test_select_matches_brute_force(gen, block_len, policy, quantised):
    for _ in range(5):
        step = Step(gen, randint(gen, 1, 24), block_len, quantised=quantised)
        got = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                              step.targets, step.progress, policy)
        expected = brute_select(step, policy)
        bad = (got != expected).nonzero().flatten().tolist()
        assert not bad, f'rows {bad} differ ({policy}, seed={gen.initial_seed()})'


def test_select_with_targets_matches_brute_force(gen):
    """Targets from running averages inside the selection: spec §3.4 then §3.5–3.6."""
    for _ in range(5):
        step = Step(gen, randint(gen, 1, 24), 32, quantised=True)
        avg = torch.randint(1, 64, step.targets.shape, generator=gen).float() / torch.randint(
            1, 17, step.targets.shape, generator=gen)
        counts = ref.count_candidates(step.candidate, step.q_start_loc, step.q_seqlens)
        got = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                              ref.focus_targets(counts, avg, 1.5), step.progress)
        step.targets = torch.tensor([brute_target(int(n), float(a), 1.5) for n, a in zip(step.num_candidates, avg)])
        assert torch.equal(got, brute_select(step, 'importance')), f'seed={gen.initial_seed()}'


def select_one(delta, candidate, block_pos, target, progress, policy='importance'):
    """One sequence owning all rows."""
    n = len(delta)
    return ref.select_kept(torch.tensor(delta, dtype=torch.float32), torch.tensor(candidate), torch.tensor(block_pos),
                           torch.tensor([0]), torch.tensor([n]), torch.tensor([target]), torch.tensor([progress]),
                           policy).tolist()


def test_spec_example_later_step():
    """Spec §3.9: L=8, progress 2, processing {2 (decoded), 3..7 (masked)}, T=2: top-2 {4, 6},
    |C| = 1 < 2, left neighbours add 3 and 5, nothing to gap-fill; 7 evicted; kv = history + 7."""
    pos = [2, 3, 4, 5, 6, 7]
    cand = [False, True, True, True, True, True]
    delta = [0.0, 0.0, 0.5, -0.5, 0.4, -0.4]  # C = {4} only (mean 0, std 0.405)
    n = ref.count_candidates(torch.tensor(cand), torch.tensor([0]), torch.tensor([6]))
    target = ref.focus_targets(n, torch.tensor([1.0]), 1.5)
    assert target.tolist() == [2]
    keep = select_one(delta, cand, pos, int(target), 2)
    assert keep == [True, True, True, True, True, False]
    layout = ref.kept_layout(torch.tensor(keep), torch.tensor([0]), torch.tensor([6]), torch.tensor(pos),
                             torch.tensor([64]), torch.tensor([2]))
    assert layout.kv_seqlens.tolist() == [64 + 7]
    assert layout.progress.tolist() == [6] and layout.rightmost.tolist() == [6]
    assert layout.q_seqlens.tolist() == [5] and int(layout.total) == 5
    assert layout.src_row.tolist() == [0, 1, 2, 3, 4, 5]


def test_spec_example_left_of_progress_stays_evicted():
    """Spec §3.9 example 2: progress 5, masked {3, 4, 6, 7}, selection {7}: the left neighbour adds
    6; 3 and 4 lie left of the progress and stay evicted."""
    pos = [3, 4, 5, 6, 7]
    cand = [True, True, False, True, True]
    delta = [0.0, 0.0, float('nan'), 0.0, 1.0]
    assert select_one(delta, cand, pos, 1, 5) == [False, False, True, True, True]


def test_spec_example_first_step_keeps_a_prefix():
    """Warm-up step: all L masked, progress -1, T = ceil(1.5) = 2: gap-fill makes the kept set the
    prefix up to the rightmost selected position."""
    delta = [0.0, -1.0, 0.2, 3.0, 0.1, 2.5, -0.3, 0.0]  # top-2 {3, 5}; C = {3, 5} too
    keep = select_one(delta, [True] * 8, list(range(8)), 2, -1)
    assert keep == [True] * 6 + [False] * 2


def test_commit_step_keeps_everything():
    """No candidates: target 0, nothing evicted."""
    target = ref.focus_targets(torch.tensor([0]), torch.tensor([3.0]), 1.5)
    assert select_one([float('nan')] * 4, [False] * 4, [0, 1, 2, 3], int(target), 3) == [True] * 4


def test_ties_go_to_the_left():
    """|C| = 1 < T = 2, so S_top: delta 5 and the leftmost of the three tied 1s."""
    delta = [5.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    pos = [0, 2, 4, 6, 8, 10, 12, 14]  # never adjacent: no left-neighbour additions
    assert select_one(delta, [True] * 8, pos, 2, 20) == [True, True] + [False] * 6


def test_population_std():
    """mean 0.5, population std 0.5: C = {0, 1} (>= 1.0) beats the top-1; the unbiased std (0.577)
    would leave C empty and keep only the first."""
    assert select_one([1.0, 1.0, 0.0, 0.0], [True] * 4, [0, 2, 4, 6], 1, 10) == [True, True, False, False]


def test_equal_deltas_keep_all():
    """sigma = 0: every candidate is >= mean + sigma, |C| = n >= T."""
    assert select_one([0.3] * 6, [True] * 6, [0, 2, 4, 6, 8, 10], 2, 20) == [True] * 6


def test_c_wins_when_large_enough():
    """|C| = 3 >= T = 2: all of C is kept, not only the top 2."""
    delta = [4.0, 4.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    pos = list(range(0, 20, 2))
    assert select_one(delta, [True] * 10, pos, 2, 30) == [True] * 3 + [False] * 7


def test_left_neighbour_does_not_cascade():
    """Only the direct left neighbour of a selected candidate is added."""
    delta = [0.0, 0.0, 0.0, 0.0, 9.0]
    # positions 0..4 adjacent; progress 10 disables gap-fill
    assert select_one(delta, [True] * 5, [0, 1, 2, 3, 4], 1, 10) == [False, False, False, True, True]


def test_left_neighbour_needs_adjacent_positions():
    delta = [0.0, 0.0, 0.0, 9.0]
    assert select_one(delta, [True] * 4, [0, 1, 2, 5], 1, 10) == [False, False, False, True]


def test_gap_fill_stops_at_progress():
    delta = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]
    keep = select_one(delta, [True] * 8, [0, 2, 4, 6, 8, 10, 12, 14], 1, 7)
    assert keep == [False] * 4 + [True] * 4  # positions 8..14: > progress 7 and <= 14


def test_single_candidate_is_kept():
    assert select_one([0.0, -5.0, 0.0], [False, True, False], [0, 1, 2], 1, -1) == [True] * 3


def test_target_at_least_count_keeps_all(gen):
    step = Step(gen, 16, 16)
    targets = step.num_candidates + torch.randint(0, 3, step.num_candidates.shape, generator=gen)
    keep = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, targets,
                           step.progress)
    assert torch.equal(keep, step.owned)


@pytest.mark.parametrize('policy', FOCUS_POLICIES)
def test_padding_rows_are_never_kept(gen, policy):
    step = Step(gen, 16, 16, max_gap=4)
    step.candidate[~step.owned] = True  # garbage flags on padding
    keep = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                           step.targets, step.progress, policy)
    assert not keep[~step.owned].any()
    assert keep[step.owned & ~step.candidate].all()


def test_leftmost_keeps_a_prefix_of_the_candidates(gen):
    """With the block progress at -1 gap-fill has nothing to add beyond the first T candidates."""
    for _ in range(10):
        step = Step(gen, 16, 32)
        progress = torch.full_like(step.progress, -1)
        keep = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                               step.targets, progress, 'leftmost')
        for b, rows in step.sequences():
            cands = [r for r in rows if step.candidate[r]]
            n, target = len(cands), int(step.targets[b])
            expected = target if 0 < target < n else n
            assert [bool(keep[r]) for r in cands] == [True] * expected + [False] * (n - expected), \
                f'seed={gen.initial_seed()}'


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match='policy'):
        select_one([0.0], [True], [0], 1, -1, policy='random')


# ----------------------------------------------------------------------------------------------
# kept layout


def test_layout_matches_brute_force(gen):
    for _ in range(10):
        step = Step(gen, randint(gen, 1, 24), 16, max_gap=3)
        keep = torch.rand(step.num_rows, generator=gen) < 0.6  # padding rows too: must be ignored
        layout = ref.kept_layout(keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history, step.progress)
        expected = brute_layout(step, keep & step.owned)
        for name, value in expected.items():
            got = getattr(layout, name)
            assert got.dtype == torch.int64
            assert got.tolist() == value, f'{name} differs, seed={gen.initial_seed()}'


def test_layout_of_an_empty_step():
    empty = torch.zeros(0, dtype=torch.int64)
    layout = ref.kept_layout(torch.zeros(0, dtype=torch.bool), torch.tensor([0, 0]), torch.tensor([0, 0]), empty,
                             torch.tensor([10, 20]), torch.tensor([-1, 3]))
    assert layout.src_row.numel() == 0 and int(layout.total) == 0
    assert layout.kv_seqlens.tolist() == [10, 24] and layout.progress.tolist() == [-1, 3]


def test_gather_rows_compacts(gen):
    step = Step(gen, 8, 16)
    keep = ref.select_kept(step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                           step.targets, step.progress)
    layout = ref.kept_layout(keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history, step.progress)
    hidden = torch.randn(step.num_rows, 3, 5, generator=gen)
    total = int(layout.total)
    assert torch.equal(hidden.index_select(0, layout.src_row[:total]), hidden[keep])  # the kept rows first, in order
    full = hidden.index_select(0, layout.src_row)
    assert torch.equal(full.sort(0).values, hidden.sort(0).values)  # a permutation: every row once


def test_dispatch_uses_the_reference_on_cpu(gen):
    step = Step(gen, 8, 16, quantised=True)
    args = (step.delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, step.targets, step.progress)
    assert torch.equal(focus_ops.select_kept(*args), ref.select_kept(*args))
    avg = torch.rand(8, generator=gen) * 4
    assert torch.equal(focus_ops.focus_targets(step.num_candidates, avg, 1.5),
                       ref.focus_targets(step.num_candidates, avg, 1.5))
