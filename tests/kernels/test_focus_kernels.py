"""FOCUS Triton kernels against the torch reference (``lmdeploy_focus.kernels.default.focus``).

Every input is fresh random each run; failures name the seed. Rows no sequence owns and rows the
kernels must not read (non-candidates for importance) hold garbage: NaN features and deltas,
random flags and positions. Importance is compared in fp32 with a tolerance (the summation order
differs); selection, targets and layout must match exactly, selection on the *same* delta input.

The ``check_*`` functions take the device so that ``test_focus_kernels_interpreter.py`` runs
them on CPU through Triton's interpreter; the tests here need CUDA.
"""
import math
import secrets
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip('triton')

from lmdeploy_focus.kernels import focus_ops  # noqa: E402
from lmdeploy_focus.kernels.cuda.focus_compact import cuda_kept_layout  # noqa: E402
from lmdeploy_focus.kernels.cuda.focus_importance import cuda_masked_importance  # noqa: E402
from lmdeploy_focus.kernels.cuda.focus_select import (  # noqa: E402
    cuda_focus_targets, cuda_select_kept)
from lmdeploy_focus.kernels.default import focus as ref  # noqa: E402
from lmdeploy_focus.config.options import FOCUS_POLICIES

pytestmark = pytest.mark.gpu

DEVICE = 'cuda'
LAYOUT_FIELDS = ('src_row', 'q_seqlens', 'q_start_loc', 'total', 'kv_seqlens', 'rightmost', 'progress')


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


def randint(gen, low, high):
    """Uniform int in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def random_step(gen, batch, block_len, *, max_gap=2, q_lens=None):
    """A ragged decode step on CPU: q_len classes none / one / partial / whole block, sequences
    packed in batch order with padding rows between them, per-sequence candidate shares of 0,
    0.6 and 1, garbage flags and positions on padding rows."""
    if q_lens is None:
        q_lens = [[0, 1, randint(gen, 1, block_len), block_len][randint(gen, 0, 3)] for _ in range(batch)]
    starts, row = [], 0
    for q_len in q_lens:
        row += randint(gen, 0, max_gap)
        starts.append(row)
        row += q_len
    num_rows = row + randint(gen, 0, max_gap)
    owned = torch.zeros(num_rows, dtype=torch.bool)
    block_pos = torch.randint(0, block_len, (num_rows, ), generator=gen)
    candidate = torch.rand(num_rows, generator=gen) < 0.5
    for start, q_len in zip(starts, q_lens):
        owned[start:start + q_len] = True
        block_pos[start:start + q_len] = torch.randperm(block_len, generator=gen)[:q_len].sort().values
        candidate[start:start + q_len] = torch.rand(q_len, generator=gen) < [0.0, 0.6, 1.0][randint(gen, 0, 2)]
    q_start_loc = torch.tensor(starts, dtype=torch.int64)
    q_seqlens = torch.tensor(q_lens, dtype=torch.int64)
    num_candidates = ref.count_candidates(candidate, q_start_loc, q_seqlens)
    small = torch.randint(1, 4, (batch, ), generator=gen)  # ceil(alpha * avg) as in practice
    anything = (torch.rand(batch, generator=gen) * (num_candidates + 2)).long()
    return SimpleNamespace(block_len=block_len,
                           num_rows=num_rows,
                           owned=owned,
                           block_pos=block_pos,
                           candidate=candidate,
                           q_start_loc=q_start_loc,
                           q_seqlens=q_seqlens,
                           num_candidates=num_candidates,
                           targets=torch.where(torch.rand(batch, generator=gen) < 0.7, small, anything),
                           progress=torch.randint(-1, block_len, (batch, ), generator=gen),
                           history=torch.randint(0, 4096, (batch, ), generator=gen))


def to(step, device):
    return SimpleNamespace(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(step).items()})


def random_qk(gen, step, heads, kv_heads, head_dim, dtype, sharp=1.0):
    """q/k in ``dtype``; rows that are no owned candidate hold NaN (must never be read)."""
    unused = ~(step.owned & step.candidate)
    q = (torch.randn(step.num_rows, heads, head_dim, generator=gen) * sharp).to(dtype)
    k = torch.randn(step.num_rows, kv_heads, head_dim, generator=gen).to(dtype)
    q[unused] = float('nan')
    k[unused] = float('nan')
    return q, k


def random_delta(gen, step, kind):
    """'normal': continuous; 'quantised': a coarse grid (ties, exact sums); 'importance': a real
    layer-1 minus layer-0 delta of the reference (sums to 0 per sequence)."""
    if kind == 'normal':
        delta = torch.randn(step.num_rows, generator=gen) * 3
    elif kind == 'quantised':
        delta = torch.randint(-4, 5, (step.num_rows, ), generator=gen).float() / 4
    else:
        layers = []
        for _ in range(2):
            q, k = random_qk(gen, step, 4, 2, 16, torch.float32, sharp=2.0)
            layers.append(ref.masked_importance(q, k, step.q_start_loc, step.q_seqlens, step.candidate, 0.25))
        delta = layers[1] - layers[0]
    return torch.where(step.owned & step.candidate, delta, float('nan'))


# ----------------------------------------------------------------------------------------------
# checks (device-agnostic)


def check_targets(gen, device, batch):
    n = torch.randint(-1, 65, (batch, ), generator=gen)
    avg = torch.randint(1, 200, (batch, ), generator=gen).float() / torch.randint(1, 65, (batch, ), generator=gen)
    avg[:4] = torch.tensor([0.5, 1.0, 2.0, float(np.nextafter(np.float32(2.0), np.float32(3.0)))])[:batch]
    for alpha in (1.0, 1.1, 1.5, 2.0, 3.3):
        expected = ref.focus_targets(n, avg, alpha)
        got = cuda_focus_targets(n.to(device), avg.to(device), alpha)
        assert got.dtype == torch.int64
        assert torch.equal(got.cpu(), expected), f'targets differ, alpha={alpha} seed={gen.initial_seed()}'


def check_importance(gen, device, *, batch, block_len, head_dim, group, dtype, kv_heads=2, sharp=1.0, strided=False,
                     q_lens=None, max_q_len=None):
    step = random_step(gen, batch, block_len, q_lens=q_lens)
    heads = kv_heads * group
    q, k = random_qk(gen, step, heads, kv_heads, head_dim, dtype, sharp)
    scale = 1 / math.sqrt(head_dim)
    expected = ref.masked_importance(q.float(), k.float(), step.q_start_loc, step.q_seqlens, step.candidate, scale)
    dq, dk = q.to(device), k.to(device)
    if strided:  # q and k as views of one fused qkv tensor, as the models produce them
        qkv = torch.empty(step.num_rows, heads + 2 * kv_heads, head_dim, dtype=dtype, device=device)
        qkv[:, :heads], qkv[:, heads:heads + kv_heads] = dq, dk
        dq, dk = qkv[:, :heads], qkv[:, heads:heads + kv_heads]
        assert not dq.is_contiguous() and not dk.is_contiguous()
    s = to(step, device)
    got = cuda_masked_importance(dq, dk, s.q_start_loc, s.q_seqlens, s.candidate, scale, max_q_len or block_len)
    assert got.dtype == torch.float32 and got.shape == (step.num_rows, )
    got = got.cpu()
    label = (f'B={batch} L={block_len} D={head_dim} G={group} Hkv={kv_heads} {dtype} sharp={sharp} '
             f'seed={gen.initial_seed()}')
    unused = ~(step.owned & step.candidate)
    assert (got[unused] == 0).all(), f'non-candidate or padding rows are not 0 ({label})'
    err = (got - expected).abs().max().item() if step.num_rows else 0.0
    print(f'ERR importance {label} max_abs={err:.3e}')
    # fp32 sums in another order: errors grow with the mass H * n a sequence distributes
    torch.testing.assert_close(got, expected, atol=1e-5 * heads * block_len, rtol=1e-5, msg=lambda m: f'{m}\n{label}')
    return got


def check_fp32_importance_is_not_tf32(device):
    """The random cases' tolerance cannot tell TF32 products from fp32 ones; this case can. One sequence of
    4 candidates, one head, the same query on every row (+-256 on even / odd dims): keys 0-2 are 1 and score 0,
    key 3 is 1 + 2^-15 on even dims and scores 1/4 (every product and partial sum exact in fp32). The width-3
    pool gives keys 2 and 3 the logit 1/4, so each query sends sigmoid(1/4) / 2 to each of them and the four
    queries 2 sigmoid(1/4) = 1.124; TF32 rounds key 3 to 1 and gives every key 1.0."""
    head_dim, rows = 64, 4
    q = torch.full((rows, 1, head_dim), 256.0)
    q[..., 1::2] = -256.0
    k = torch.ones(rows, 1, head_dim)
    k[3, 0, 0::2] = 1.0 + 2.0**-15
    one = torch.ones(1, dtype=torch.int64)
    got = cuda_masked_importance(q.to(device), k.to(device), (one - 1).to(device), (one * rows).to(device),
                                 torch.ones(rows, dtype=torch.bool, device=device), 1.0, 16)
    high = 2 * torch.sigmoid(torch.tensor(0.25, dtype=torch.float64)).item()
    expected = torch.tensor([2 - high, 2 - high, high, high], dtype=torch.float64)
    torch.testing.assert_close(got.double().cpu(), expected, atol=1e-5, rtol=0,
                               msg=lambda m: f'{m}\n(1.0 everywhere: the products ran in TF32)')


def check_select(gen, device, *, batch, block_len, policy, delta_kind, max_q_len=None):
    step = random_step(gen, batch, block_len)
    delta = random_delta(gen, step, delta_kind)
    args = (delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, step.targets, step.progress)
    expected = ref.select_kept(*args, policy)
    got = cuda_select_kept(*(t.to(device) for t in args), policy, max_q_len or block_len)
    assert got.dtype == torch.bool
    bad = (got.cpu() != expected).nonzero().flatten().tolist()
    assert not bad, (f'rows {bad[:20]} differ: B={batch} L={block_len} {policy} {delta_kind} '
                     f'seed={gen.initial_seed()}')
    return step, expected


def check_layout(gen, device, *, batch, block_len, from_selection=True, max_gap=2):
    step = random_step(gen, batch, block_len, max_gap=max_gap)
    if from_selection:
        delta = random_delta(gen, step, 'normal')
        keep = ref.select_kept(delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, step.targets,
                               step.progress)
    else:  # arbitrary flags, garbage on padding rows included
        keep = torch.rand(step.num_rows, generator=gen) < 0.5
    args = (keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history, step.progress)
    expected = ref.kept_layout(*args)
    got = cuda_kept_layout(*(t.to(device) for t in args), block_len)
    for name in LAYOUT_FIELDS:
        value = getattr(got, name)
        assert value.dtype == torch.int64, name
        assert torch.equal(value.cpu(), getattr(expected, name)), \
            f'{name} differs: B={batch} L={block_len} N={step.num_rows} seed={gen.initial_seed()}'
    return got


# ----------------------------------------------------------------------------------------------
# GPU tests


def test_targets(gen):
    check_targets(gen, DEVICE, randint(gen, 4, 600))


@pytest.mark.parametrize('group', [1, 2, 4, 8])
@pytest.mark.parametrize('head_dim', [64, 128])
@pytest.mark.parametrize('block_len', [16, 32, 64])
def test_importance_bf16(gen, block_len, head_dim, group):
    check_importance(gen, DEVICE, batch=randint(gen, 1, 64), block_len=block_len, head_dim=head_dim, group=group,
                     dtype=torch.bfloat16)


@pytest.mark.parametrize('dtype', [torch.float16, torch.float32])
@pytest.mark.parametrize('group', [1, 4])
@pytest.mark.parametrize('head_dim', [64, 128])
def test_importance_fp16_fp32(gen, head_dim, group, dtype):
    check_importance(gen, DEVICE, batch=randint(gen, 1, 64), block_len=32, head_dim=head_dim, group=group, dtype=dtype)


@pytest.mark.parametrize('block_len, dtype', [(128, torch.bfloat16), (128, torch.float16), (64, torch.float32)])
def test_importance_long_blocks(gen, block_len, dtype):
    """The longest blocks FOCUS accepts (128; fp32, which the engine never runs, 64): the kernel's tiles grow with L,
    which only a GPU compile shows (a first GPU run found L 256 / fp32 L 128 out of shared memory: now refused, see
    tests/test_kernel_limits.py)."""
    check_importance(gen, DEVICE, batch=randint(gen, 1, 16), block_len=block_len, head_dim=128, group=4, dtype=dtype)


def test_fp32_importance_is_not_tf32():
    check_fp32_importance_is_not_tf32(DEVICE)


@pytest.mark.parametrize('batch', [1, 7, 256])
def test_importance_batch_sizes(gen, batch):
    check_importance(gen, DEVICE, batch=batch, block_len=64, head_dim=128, group=4, dtype=torch.bfloat16)


def test_importance_sdar_8b_shape_strided(gen):
    """32 query / 8 KV heads, d 128, q and k strided views of a fused qkv tensor."""
    check_importance(gen, DEVICE, batch=randint(gen, 16, 64), block_len=32, head_dim=128, group=4, kv_heads=8,
                     dtype=torch.bfloat16, strided=True)


@pytest.mark.parametrize('sharp', [4.0, 16.0])
def test_importance_sharp_logits(gen, sharp):
    """Peaked softmax (trained models' logits are far from unit scale)."""
    check_importance(gen, DEVICE, batch=32, block_len=32, head_dim=128, group=2, dtype=torch.float32, sharp=sharp)


def test_importance_edge_lengths(gen):
    """Empty sequences, single rows, a block that is not a power of two (L=24, bound 24)."""
    check_importance(gen, DEVICE, batch=6, block_len=24, head_dim=64, group=2, dtype=torch.bfloat16,
                     q_lens=[0, 1, 24, 0, 13, 1])
    check_importance(gen, DEVICE, batch=3, block_len=16, head_dim=64, group=1, dtype=torch.bfloat16, q_lens=[0, 0, 0])


def test_importance_is_deterministic(gen):
    step = random_step(gen, 64, 64)
    q, k = (t.to(DEVICE) for t in random_qk(gen, step, 16, 2, 128, torch.bfloat16))
    s = to(step, DEVICE)
    runs = [cuda_masked_importance(q, k, s.q_start_loc, s.q_seqlens, s.candidate, 0.088, 64) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:]), f'seed={gen.initial_seed()}'


@pytest.mark.parametrize('delta_kind', ['normal', 'quantised', 'importance'])
@pytest.mark.parametrize('policy', FOCUS_POLICIES)
@pytest.mark.parametrize('batch', [1, 7, 256])
@pytest.mark.parametrize('block_len', [16, 24, 32, 64])
def test_select(gen, block_len, batch, policy, delta_kind):
    check_select(gen, DEVICE, batch=batch, block_len=block_len, policy=policy, delta_kind=delta_kind)


@pytest.mark.parametrize('policy', FOCUS_POLICIES)
@pytest.mark.parametrize('block_len', [128])  # the longest block FOCUS accepts
def test_select_and_layout_long_blocks(gen, block_len, policy):
    check_select(gen, DEVICE, batch=randint(gen, 1, 64), block_len=block_len, policy=policy, delta_kind='importance')
    check_layout(gen, DEVICE, batch=randint(gen, 1, 64), block_len=block_len, from_selection=True)


def test_select_with_a_larger_static_bound(gen):
    """max_q_len only bounds the tile: a bound above the real block length changes nothing."""
    check_select(gen, DEVICE, batch=64, block_len=16, policy='importance', delta_kind='quantised', max_q_len=64)


def test_select_rejects_unknown_policy():
    x = torch.zeros(1, device=DEVICE)
    with pytest.raises(ValueError, match='policy'):
        cuda_select_kept(x, x.bool(), x.long(), x.long(), x.long(), x.long(), x.long(), 'bottom', 16)


@pytest.mark.parametrize('from_selection', [True, False])
@pytest.mark.parametrize('batch', [1, 7, 256])
@pytest.mark.parametrize('block_len', [16, 64])
def test_layout(gen, block_len, batch, from_selection):
    check_layout(gen, DEVICE, batch=batch, block_len=block_len, from_selection=from_selection)


def test_layout_scans_many_chunks(gen):
    """More sequences and rows than one scan chunk (1024): the carries between chunks."""
    check_layout(gen, DEVICE, batch=1500, block_len=16, from_selection=False, max_gap=3)


def test_layout_without_rows():
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    lens = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    layout = cuda_kept_layout(empty.bool(), lens, lens, empty, torch.tensor([5, 6, 7], device=DEVICE),
                              torch.tensor([-1, 2, 9], device=DEVICE), 32)
    assert layout.kv_seqlens.tolist() == [5, 9, 17] and int(layout.total) == 0 and layout.src_row.numel() == 0


def run_pipeline(step, q0, k0, q1, k1, avg, alpha, block_len, policy='importance'):
    """One layer-1 eviction through ``focus_ops`` (spec §3.10), on whatever device the inputs are."""
    common = (step.q_start_loc, step.q_seqlens, step.candidate, 0.125)
    delta = (focus_ops.masked_importance(q1, k1, *common, max_q_len=block_len) -
             focus_ops.masked_importance(q0, k0, *common, max_q_len=block_len))
    targets = focus_ops.focus_targets(focus_ops.count_candidates(step.candidate, step.q_start_loc, step.q_seqlens),
                                      avg, alpha)
    keep = focus_ops.select_kept(delta, step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens, targets,
                                 step.progress, policy, max_q_len=block_len)
    layout = focus_ops.kept_layout(keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history, step.progress,
                                   max_q_len=block_len)
    return delta, targets, keep, layout


def random_layers(gen, step, dtype=torch.bfloat16):
    return [t.to(DEVICE) for _ in range(2) for t in random_qk(gen, step, 8, 2, 64, dtype)]


@pytest.mark.filterwarnings('ignore:Synchronization debug mode')
def test_pipeline_has_no_host_sync(gen):
    step = random_step(gen, 16, 32)
    q0, k0, q1, k1 = random_layers(gen, step)
    s = to(step, DEVICE)
    avg = torch.rand(16, device=DEVICE) * 3
    outside = run_pipeline(s, q0, k0, q1, k1, avg, 1.5, 32)  # compile first: the compiler may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with pytest.raises(RuntimeError):  # the detector is live
            avg.sum().item()
        inside = run_pipeline(s, q0, k0, q1, k1, avg, 1.5, 32)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    # the same computation outside the detector (the kernels are deterministic: no float atomics)
    for name, got, want in zip(('delta', 'targets', 'keep'), inside[:3], outside[:3]):
        assert torch.equal(got, want), f'{name} seed={gen.initial_seed()}'
    for name in LAYOUT_FIELDS:
        assert torch.equal(getattr(inside[3], name), getattr(outside[3], name)), f'{name} seed={gen.initial_seed()}'


def test_pipeline_matches_reference_given_the_delta(gen):
    """focus_ops on CUDA: importance close to the reference; targets, selection (on the kernel's
    own delta) and layout exact."""
    step = random_step(gen, 48, 32)
    q0, k0, q1, k1 = random_layers(gen, step, torch.float32)
    avg = torch.rand(48, generator=gen) * 3
    delta, targets, keep, layout = run_pipeline(to(step, DEVICE), q0, k0, q1, k1, avg.to(DEVICE), 1.5, 32)
    ref_delta, ref_targets, _, _ = run_pipeline(step, *(t.cpu().float() for t in (q0, k0, q1, k1)), avg, 1.5, 32)
    torch.testing.assert_close(delta.cpu(), ref_delta, atol=1e-5 * 8 * 32, rtol=1e-5)
    assert torch.equal(targets.cpu(), ref_targets)
    expected_keep = ref.select_kept(delta.cpu(), step.candidate, step.block_pos, step.q_start_loc, step.q_seqlens,
                                    ref_targets, step.progress)
    assert torch.equal(keep.cpu(), expected_keep), f'seed={gen.initial_seed()}'
    expected_layout = ref.kept_layout(expected_keep, step.q_start_loc, step.q_seqlens, step.block_pos, step.history,
                                      step.progress)
    for name in LAYOUT_FIELDS:
        assert torch.equal(getattr(layout, name).cpu(), getattr(expected_layout, name)), name
    hidden = torch.randn(step.num_rows, 40, device=DEVICE)
    total = int(layout.total)
    assert torch.equal(hidden.index_select(0, layout.src_row[:total]), hidden[keep])


def test_pipeline_graph_replay(gen):
    """The pipeline captured once in a CUDA graph serves new inputs written in place."""
    block_len, batch = 32, 24
    step = random_step(gen, batch, block_len, max_gap=0, q_lens=[block_len] * batch)  # same rows every replay
    s = to(step, DEVICE)
    static = random_layers(gen, step)
    avg = torch.ones(batch, device=DEVICE)
    run_pipeline(s, *static, avg, 1.5, block_len)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run_pipeline(s, *static, avg, 1.5, block_len)
    for replay in range(3):
        fresh = random_step(gen, batch, block_len, max_gap=0, q_lens=[block_len] * batch)
        for name in ('candidate', 'block_pos', 'progress', 'history'):
            getattr(s, name).copy_(getattr(fresh, name))
        for buffer, value in zip(static, random_layers(gen, fresh)):
            buffer.copy_(value)
        avg.copy_(torch.rand(batch, generator=gen) * 3)
        graph.replay()
        delta, targets, keep, layout = (t for t in outputs)
        eager = run_pipeline(s, *static, avg, 1.5, block_len)
        assert torch.equal(delta, eager[0]) and torch.equal(targets, eager[1]) and torch.equal(keep, eager[2])
        for name in LAYOUT_FIELDS:
            assert torch.equal(getattr(layout, name), getattr(eager[3], name)), f'{name} replay {replay}'
