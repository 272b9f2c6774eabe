"""Ragged paged attention kernel (and sparse fill feeding it) against the torch reference.

The expected output is ``lmdeploy_focus.kernels.default.paged_attention`` (non-causal) computed in fp32
from the same fp16/bf16/fp32 inputs. fp32 inputs must be computed in true fp32 (no TF32): their
tolerance is 1e-5, where TF32 products miss by ~1e-3, and the reference then runs on the CPU so
that torch's own TF32 switches cannot blur it. Inputs are fresh random every run; the seed is in
every failure message. Cache slots that no sequence owns (past kv_len, spare pages, unused
page-table entries) hold NaN, so any read outside keys ``0 .. kv_len-1`` shows up as NaN in the
output.

``DEVICE`` is read at call time: the interpreter test (``test_kernels_triton_interpreter.py``)
imports these helpers with ``DEVICE = 'cpu'``.
"""
import math
import secrets
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip('triton')

from lmdeploy_focus.kernels.cuda.ragged_paged_attention import ragged_paged_attention  # noqa: E402
from lmdeploy_focus.kernels.cuda.sparse_fill_kv import sparse_fill_kv_cache  # noqa: E402
from lmdeploy_focus.kernels.default import fill_kv_cache, paged_attention  # noqa: E402

pytestmark = pytest.mark.gpu

DEVICE = 'cuda'
# fp32: "ieee" products and fp32 accumulation land within a few 1e-7 of the fp32 reference (outputs
# are averages of N(0, 1) values); TF32 products would be off by ~1e-3.
TOLERANCE = {
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
}


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


def randint(gen, low, high):
    """Uniform int in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def random_q_len(gen, block_len):
    """The q_len classes a delayed-cache step produces: none, one, partial, whole block."""
    kind = randint(gen, 0, 3)
    return [0, 1, randint(gen, 1, block_len), block_len][kind]


def paged_cache(gen, kv_lens, page_size, kv_heads, head_dim, dtype, extra_positions=0):
    """Random pages behind a scattered page table; every slot no sequence owns holds NaN.

    Sequence ``b`` owns positions ``0 .. kv_lens[b] + extra_positions - 1`` (extra: room for a
    block that a later fill writes); keys past ``kv_lens[b]`` are NaN. Unused page-table entries
    point at a NaN page.
    """
    pages_per_seq = [-(-(n + extra_positions) // page_size) for n in kv_lens]
    num_pages = sum(pages_per_seq) + 2  # the last one is the NaN page of unused entries
    nan_page = num_pages - 1
    order = torch.randperm(num_pages - 1, generator=gen)
    table = torch.full((len(kv_lens), max(pages_per_seq + [1]) + 1), nan_page, dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq):
        table[b, :n] = order[used:used + n]
        used += n
    caches = []
    for _ in range(2):
        cache = torch.full((num_pages, page_size, kv_heads, head_dim), float('nan'))
        for b, kv_len in enumerate(kv_lens):
            pos = torch.arange(kv_len)
            cache[table[b, pos // page_size].long(), pos % page_size] = torch.randn(kv_len,
                                                                                    kv_heads,
                                                                                    head_dim,
                                                                                    generator=gen)
        caches.append(cache.to(dtype))
    return caches[0], caches[1], table


def ragged_rows(gen, q_lens, max_gap=2):
    """q_start_loc for sequences packed in batch order with random padding rows between them."""
    starts, row = [], 0
    for q_len in q_lens:
        row += randint(gen, 0, max_gap)
        starts.append(row)
        row += q_len
    return torch.tensor(starts, dtype=torch.int32), row + randint(gen, 0, max_gap)


def random_batch(gen,
                 *,
                 batch,
                 block_len,
                 page_size,
                 kv_heads,
                 group,
                 head_dim,
                 dtype,
                 max_history_pages=3,
                 q_lens=None):
    """A decode step: ragged q_lens (random classes unless given), history of 0 .. a few pages (not
    page multiples)."""
    q_lens = list(q_lens) if q_lens is not None else [random_q_len(gen, block_len) for _ in range(batch)]
    kv_lens = [randint(gen, 0, max_history_pages * page_size) + q for q in q_lens]
    k_cache, v_cache, table = paged_cache(gen, kv_lens, page_size, kv_heads, head_dim, dtype)
    q_start_loc, num_rows = ragged_rows(gen, q_lens)
    q = torch.randn(num_rows, kv_heads * group, head_dim, generator=gen).to(dtype)
    tensors = dict(q=q,
                   k_cache=k_cache,
                   v_cache=v_cache,
                   block_offsets=table,
                   q_start_loc=q_start_loc,
                   q_seqlens=torch.tensor(q_lens, dtype=torch.int32),
                   kv_seqlens=torch.tensor(kv_lens, dtype=torch.int32))
    return SimpleNamespace(**{k: v.to(DEVICE) for k, v in tensors.items()}, scale=1 / math.sqrt(head_dim))


def owned_rows(q_start_loc, q_seqlens):
    """Bool per ragged row: does some sequence own it."""
    owned = torch.zeros(int((q_start_loc + q_seqlens).max()) + 1, dtype=torch.bool)
    for start, q_len in zip(q_start_loc.tolist(), q_seqlens.tolist()):
        owned[start:start + q_len] = True
    return owned


def check_against_reference(out, b, dtype, seed, label, sentinel, reference_inputs=None):
    """Kernel output ``out`` for batch ``b`` vs the reference on ``reference_inputs`` (default
    ``b``); rows owned by no sequence must still hold ``sentinel``."""
    r = reference_inputs or b
    # fp32: on the CPU, where torch's matmul is plain fp32 whatever the CUDA TF32 switches say
    where = 'cpu' if dtype == torch.float32 else DEVICE
    expected = paged_attention(*(t.to(where) for t in (r.q.float(), r.k_cache.float(), r.v_cache.float(),
                                                       r.block_offsets, r.q_start_loc, r.q_seqlens, r.kv_seqlens)),
                               r.scale).to(DEVICE)
    owned = torch.zeros(b.q.size(0), dtype=torch.bool)
    mask = owned_rows(b.q_start_loc.cpu(), b.q_seqlens.cpu())[:b.q.size(0)]
    owned[:mask.numel()] = mask
    owned = owned.to(DEVICE)
    err = (out[owned].float() - expected[owned]).abs().max().item() if owned.any() else 0.0
    print(f'ERR attention {label} {dtype} max_abs={err:.3e} seed={seed}')
    torch.testing.assert_close(out[owned].float(),
                               expected[owned],
                               **TOLERANCE[dtype],
                               msg=lambda m: f'{m}\n{label} seed={seed}')
    assert (out[~owned] == sentinel).all(), f'rows owned by no sequence were written ({label} seed={seed})'


def launch(b, max_q_len, out):
    return ragged_paged_attention(b.q, b.k_cache, b.v_cache, b.block_offsets, b.q_start_loc, b.q_seqlens, b.kv_seqlens,
                                  b.scale, max_q_len, out)


def run_and_compare(b, max_q_len, dtype, seed, label, reference_inputs=None):
    sentinel = 7.0
    out = torch.full((b.q.size(0), b.q.size(1), b.v_cache.size(-1)), sentinel, dtype=dtype, device=DEVICE)
    launch(b, max_q_len, out)
    check_against_reference(out, b, dtype, seed, label, sentinel, reference_inputs)


def run_zero_padding_and_compare(b, max_q_len, dtype, seed, label):
    """``zero_padding``: the kernel allocates the output, owned rows match the reference, every other row is 0.

    The allocator is handed NaN memory of the output's size first, so an output left uninitialised shows NaN."""
    shape = (b.q.size(0), b.q.size(1), b.v_cache.size(-1))
    stale = torch.full(shape, float('nan'), dtype=dtype, device=DEVICE)
    del stale
    out = ragged_paged_attention(b.q, b.k_cache, b.v_cache, b.block_offsets, b.q_start_loc, b.q_seqlens,
                                 b.kv_seqlens, b.scale, max_q_len, zero_padding=True)
    check_against_reference(out, b, dtype, seed, f'{label}, zero padding', sentinel=0.0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
def test_zero_padding_leaves_zeros_in_rows_no_sequence_owns(gen, dtype):
    """A MoE model's step zeroes its padding rows' attention output (StepConfig.zero_padding)."""
    for trial in range(3):
        b = random_batch(gen, batch=randint(gen, 1, 8), block_len=32, page_size=16, kv_heads=2, group=4,
                         head_dim=64, dtype=dtype)
        run_zero_padding_and_compare(b, 32, dtype, gen.initial_seed(), f'trial {trial}')


def test_zero_padding_with_a_given_output_is_refused():
    b = SimpleNamespace(q=torch.zeros(4, 2, 64, device=DEVICE))
    with pytest.raises(ValueError, match='zero_padding'):
        ragged_paged_attention(b.q, torch.zeros(2, 16, 1, 64, device=DEVICE), torch.zeros(2, 16, 1, 64, device=DEVICE),
                               torch.zeros(1, 2, dtype=torch.int32, device=DEVICE),
                               torch.zeros(1, dtype=torch.int32, device=DEVICE),
                               torch.ones(1, dtype=torch.int32, device=DEVICE),
                               torch.ones(1, dtype=torch.int32, device=DEVICE), 0.125, 16, torch.empty_like(b.q),
                               zero_padding=True)


@pytest.mark.parametrize('page_size', [16, 64])
@pytest.mark.parametrize('group', [1, 4, 8])
@pytest.mark.parametrize('head_dim', [64, 128])
@pytest.mark.parametrize('block_len', [16, 32, 64])
def test_matches_reference_bf16(gen, block_len, head_dim, group, page_size):
    batch = randint(gen, 1, 64)
    b = random_batch(gen,
                     batch=batch,
                     block_len=block_len,
                     page_size=page_size,
                     kv_heads=2,
                     group=group,
                     head_dim=head_dim,
                     dtype=torch.bfloat16)
    label = f'L={block_len} D={head_dim} G={group} page={page_size} B={batch}'
    run_and_compare(b, block_len, torch.bfloat16, gen.initial_seed(), label)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
@pytest.mark.parametrize('block_len', [128, 256])
def test_matches_reference_long_blocks(gen, block_len, dtype):
    """Block lengths above 64 need a page of as many tokens (the config's rule); never GPU-run before."""
    batch = randint(gen, 1, 16)
    b = random_batch(gen, batch=batch, block_len=block_len, page_size=block_len, kv_heads=2, group=4, head_dim=128,
                     dtype=dtype)
    run_and_compare(b, block_len, dtype, gen.initial_seed(), f'L={block_len} {dtype} B={batch}')


@pytest.mark.parametrize('group', [1, 4, 8])
@pytest.mark.parametrize('head_dim', [64, 128])
def test_matches_reference_fp16(gen, head_dim, group):
    batch = randint(gen, 1, 64)
    b = random_batch(gen,
                     batch=batch,
                     block_len=32,
                     page_size=64,
                     kv_heads=2,
                     group=group,
                     head_dim=head_dim,
                     dtype=torch.float16)
    run_and_compare(b, 32, torch.float16, gen.initial_seed(), f'D={head_dim} G={group} B={batch}')


@pytest.mark.parametrize('page_size', [16, 64])
@pytest.mark.parametrize('group', [1, 4, 8])
@pytest.mark.parametrize('head_dim', [64, 128])
@pytest.mark.parametrize('block_len', [16, 32])
def test_matches_reference_fp32(gen, block_len, head_dim, group, page_size):
    """fp32 in true fp32: random ragged batches (q_len 0 / 1 / partial / whole block), GQA."""
    batch = randint(gen, 1, 64)
    b = random_batch(gen,
                     batch=batch,
                     block_len=block_len,
                     page_size=page_size,
                     kv_heads=2,
                     group=group,
                     head_dim=head_dim,
                     dtype=torch.float32)
    label = f'L={block_len} D={head_dim} G={group} page={page_size} B={batch}'
    run_and_compare(b, block_len, torch.float32, gen.initial_seed(), label)


# every q_len class in one batch: empty sequences (first, middle, last), q_len 1, q_len = block
EDGE_Q_LENS = [0, 1, 32, 0, 7, 32, 1, 0]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('head_dim', [64, 128])
def test_edge_q_lens(gen, head_dim, dtype):
    b = random_batch(gen,
                     batch=len(EDGE_Q_LENS),
                     block_len=32,
                     page_size=16,
                     kv_heads=2,
                     group=4,
                     head_dim=head_dim,
                     dtype=dtype,
                     q_lens=EDGE_Q_LENS)
    run_and_compare(b, 32, dtype, gen.initial_seed(), f'edge q_lens D={head_dim}')


def check_fp32_products_are_not_tf32(device):
    """Two keys that differ below TF32's 10-bit mantissa (1 vs 1 + 2^-15 on even dims) but give
    scores 0 and 1/4 (q = +-256 on even / odd dims; every product and partial sum is exact in fp32):
    true fp32 weights value 1 by sigmoid(1/4) = 0.562; TF32 rounds both keys to 1 and gives 0.5."""
    head_dim = 64
    k_cache = torch.zeros(1, 16, 1, head_dim, device=device)
    v_cache = torch.zeros(1, 16, 1, head_dim, device=device)
    k_cache[0, 0] = 1.0
    k_cache[0, 1] = 1.0
    k_cache[0, 1, 0, 0::2] = 1.0 + 2.0**-15
    v_cache[0, 1] = 1.0
    q = torch.full((1, 1, head_dim), 256.0, device=device)
    q[..., 1::2] = -256.0
    one = torch.ones(1, dtype=torch.int32, device=device)
    out = ragged_paged_attention(q, k_cache, v_cache, torch.zeros(1, 1, dtype=torch.int32, device=device), one - 1,
                                 one, one + 1, 1.0, 16)
    expected = torch.sigmoid(torch.tensor(0.25, dtype=torch.float64)).item()
    torch.testing.assert_close(out.double().cpu(),
                               torch.full((1, 1, head_dim), expected, dtype=torch.float64),
                               atol=1e-6,
                               rtol=0,
                               msg=lambda m: f'{m}\n(0.5 everywhere: the products ran in TF32)')


def test_fp32_products_are_not_tf32():
    check_fp32_products_are_not_tf32(DEVICE)


def test_sdar_8b_shape_with_strided_q(gen):
    """H 32 / Hkv 8 / D 128 / page 64 / L 32, q a strided view of a fused qkv tensor (as in models)."""
    b = random_batch(gen,
                     batch=randint(gen, 32, 64),
                     block_len=32,
                     page_size=64,
                     kv_heads=8,
                     group=4,
                     head_dim=128,
                     dtype=torch.bfloat16,
                     max_history_pages=8)
    qkv = torch.randn(b.q.size(0), 48, 128, device=DEVICE, dtype=torch.bfloat16)
    qkv[:, :32] = b.q
    b.q = qkv[:, :32]
    assert not b.q.is_contiguous()
    run_and_compare(b, 32, torch.bfloat16, gen.initial_seed(), 'SDAR-8B strided q')


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
def test_no_keys_gives_zeros(gen, dtype):
    """kv_len 0 with queries (not expressible in the reference, which asserts q_len <= kv_len)."""
    k_cache, v_cache, table = paged_cache(gen, [0, 0], 16, 2, 64, dtype)
    q = torch.randn(5, 4, 64, generator=gen).to(dtype).to(DEVICE)
    out = ragged_paged_attention(q, k_cache.to(DEVICE), v_cache.to(DEVICE), table.to(DEVICE),
                                 torch.tensor([0, 2], dtype=torch.int32, device=DEVICE),
                                 torch.tensor([2, 3], dtype=torch.int32, device=DEVICE),
                                 torch.zeros(2, dtype=torch.int32, device=DEVICE), 0.125, 16)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
def test_graph_replay_with_new_lengths(gen, dtype):
    """One captured launch serves any q_lens <= max_q_len: the grid depends on shapes only and the
    wrapper never syncs (capture would fail on a sync). Lengths change in place between replays."""
    block_len = 32
    b = random_batch(gen, batch=24, block_len=block_len, page_size=16, kv_heads=2, group=4, head_dim=128, dtype=dtype)
    out = torch.empty(b.q.size(0), b.q.size(1), 128, dtype=dtype, device=DEVICE)
    launch(b, block_len, out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch(b, block_len, out)
    original_q_lens, original_kv_lens = b.q_seqlens.clone(), b.kv_seqlens.clone()
    for replay in range(3):
        # shrink lengths inside what the cache holds: q_len' <= q_len, q_len' <= kv_len' <= kv_len
        q_lens = (original_q_lens.float() * torch.rand(24, device=DEVICE)).int()
        kv_lens = q_lens + ((original_kv_lens - q_lens).float() * torch.rand(24, device=DEVICE)).int()
        b.q_seqlens.copy_(q_lens)
        b.kv_seqlens.copy_(kv_lens)
        out.fill_(7.0)
        graph.replay()
        check_against_reference(out, b, dtype, gen.initial_seed(), f'graph replay {replay}', 7.0)


@pytest.mark.filterwarnings('ignore:Synchronization debug mode')
def test_no_host_sync(gen):
    b = random_batch(gen, batch=8, block_len=16, page_size=64, kv_heads=2, group=8, head_dim=64, dtype=torch.float16)
    launch(b, 16, None)  # compile first: the compiler may sync
    sentinel = 7.0
    out = torch.full((b.q.size(0), b.q.size(1), b.v_cache.size(-1)), sentinel, dtype=torch.float16, device=DEVICE)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with pytest.raises(RuntimeError):  # the detector is live
            b.q_seqlens.sum().item()
        launch(b, 16, out)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    check_against_reference(out, b, torch.float16, gen.initial_seed(), 'under sync debug', sentinel)


def test_unsupported_dtype_is_rejected():
    """fp64 (or any other dtype) is refused with a clear error, never computed in another dtype."""
    cache = torch.zeros(2, 16, 1, 64, dtype=torch.float64, device=DEVICE)
    q = torch.zeros(1, 1, 64, dtype=torch.float64, device=DEVICE)
    lens = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match='fp16, bf16 or fp32'):
        ragged_paged_attention(q, cache, cache, lens[:, None], lens - 1, lens, lens, 0.125, 16)


@pytest.mark.parametrize('dtype_name', ['int8', 'float8_e4m3fn'])
def test_quantised_cache_is_rejected(dtype_name):
    cache = torch.zeros(2, 16, 1, 64, dtype=getattr(torch, dtype_name), device=DEVICE)
    q = torch.zeros(1, 1, 64, dtype=torch.bfloat16, device=DEVICE)
    lens = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(NotImplementedError, match='quantised'):
        ragged_paged_attention(q, cache, cache, lens[:, None], lens - 1, lens, lens, 0.125, 16)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
@pytest.mark.parametrize('page_size', [16, 64])
@pytest.mark.parametrize('block_len', [16, 32, 64])
def test_fill_then_attend_matches_reference(gen, block_len, page_size, dtype):
    """One delayed-cache layer step: scatter the processed block positions, then attend.

    Each sequence has a history (not a page multiple) and a block of ``L`` positions holding stale
    K/V; it processes a random subset of the block (unsorted rows), and attends up to its rightmost
    processed position (spec §2.2: ``kv_len = history + max(processed) + 1``).
    """
    group, kv_heads, head_dim = 4, 2, 128
    batch = randint(gen, 1, 64)
    history = [randint(gen, 0, 3 * page_size) for _ in range(batch)]
    processed = []
    for _ in range(batch):
        q_len = random_q_len(gen, block_len)
        processed.append(torch.randperm(block_len, generator=gen)[:q_len])
    # stale K/V of the whole block is already cached (written by earlier steps)
    k_cache, v_cache, table = paged_cache(gen, [h + block_len for h in history], page_size, kv_heads, head_dim, dtype)
    q_lens = [p.numel() for p in processed]
    kv_lens = [h + (int(p.max()) + 1 if p.numel() else 0) for h, p in zip(history, processed)]
    q_start_loc, num_rows = ragged_rows(gen, q_lens)
    positions = torch.zeros(num_rows, dtype=torch.int64)
    for start, h, p in zip(q_start_loc.tolist(), history, processed):
        positions[start:start + p.numel()] = h + p
    new_k = torch.randn(num_rows, kv_heads, head_dim, generator=gen).to(dtype)
    new_v = torch.randn(num_rows, kv_heads, head_dim, generator=gen).to(dtype)
    q = torch.randn(num_rows, kv_heads * group, head_dim, generator=gen).to(dtype)
    args = [t.to(DEVICE) for t in (table, q_start_loc, torch.tensor(q_lens, dtype=torch.int32))]
    kv_seqlens = torch.tensor(kv_lens, dtype=torch.int32, device=DEVICE)
    new_k, new_v, q, positions = (t.to(DEVICE) for t in (new_k, new_v, q, positions))
    k_cache, v_cache = k_cache.to(DEVICE), v_cache.to(DEVICE)
    ref_k_cache, ref_v_cache = k_cache.clone(), v_cache.clone()

    sparse_fill_kv_cache(new_k, new_v, k_cache, v_cache, *args, positions)
    fill_kv_cache(new_k, new_v, ref_k_cache, ref_v_cache, *args, kv_seqlens, positions_in_seq=positions)
    seed = gen.initial_seed()
    assert torch.equal(k_cache.nan_to_num(-1), ref_k_cache.nan_to_num(-1)), f'k cache differs, seed={seed}'
    assert torch.equal(v_cache.nan_to_num(-1), ref_v_cache.nan_to_num(-1)), f'v cache differs, seed={seed}'

    step = dict(q=q,
                block_offsets=args[0],
                q_start_loc=args[1],
                q_seqlens=args[2],
                kv_seqlens=kv_seqlens,
                scale=1 / math.sqrt(head_dim))
    kernel_side = SimpleNamespace(**step, k_cache=k_cache, v_cache=v_cache)
    reference_side = SimpleNamespace(**step, k_cache=ref_k_cache, v_cache=ref_v_cache)
    run_and_compare(kernel_side,
                    block_len,
                    dtype,
                    seed,
                    f'fill+attend L={block_len} page={page_size} {dtype}',
                    reference_inputs=reference_side)
