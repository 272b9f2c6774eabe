"""Sparse KV fill kernel against the torch reference ``fill_kv_cache(..., positions_in_seq=...)``.

Rows land at unsorted, arbitrary positions of their sequence (a block may straddle pages); the
kernel's cache must equal the reference's bit for bit, and every slot no row targets must keep its
old value. Inputs are fresh random every run; the seed is in every failure message.
"""
import secrets

import pytest
import torch

pytest.importorskip('triton')

from lmdeploy_focus.kernels.cuda.sparse_fill_kv import sparse_fill_kv_cache  # noqa: E402
from lmdeploy_focus.kernels.default import fill_kv_cache  # noqa: E402

pytestmark = pytest.mark.gpu

DEVICE = 'cuda'


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


def randint(gen, low, high):
    """Uniform int in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def random_fill_step(gen, *, block_len, page_size, kv_heads, head_dim, head_dim_v, dtype, cache_dtype, anywhere):
    """One step's rows and a scattered paged cache.

    Each sequence has a history of 0 .. 3 pages (not page multiples) followed by a block of
    ``block_len`` positions; it writes q_len in {0, 1, partial, block_len} rows, in random order, at
    block positions (``anywhere``: at any position up to the end of its block). Padding rows
    between sequences carry position 0, so a row given to the wrong sequence would show.
    """
    batch = randint(gen, 1, 64)
    capacity = [randint(gen, 0, 3 * page_size) + block_len for _ in range(batch)]
    pages_per_seq = [-(-n // page_size) for n in capacity]
    num_pages = sum(pages_per_seq) + 2  # spare pages no sequence owns
    order = torch.randperm(num_pages, generator=gen)
    table = torch.full((batch, max(pages_per_seq) + 1), int(order[-1]), dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq):
        table[b, :n] = order[used:used + n]
        used += n

    q_lens, starts, positions, row = [], [], [], 0
    for cap in capacity:
        q_len = [0, 1, randint(gen, 1, block_len), block_len][randint(gen, 0, 3)]
        gap = randint(gen, 0, 2)
        positions += [0] * gap
        row += gap
        starts.append(row)
        q_lens.append(q_len)
        if anywhere:
            positions += torch.randperm(cap, generator=gen)[:q_len].tolist()
        else:
            positions += (cap - block_len + torch.randperm(block_len, generator=gen)[:q_len]).tolist()
        row += q_len
    num_rows = row

    def rand(*shape, dtype):
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)

    return dict(k=rand(num_rows, kv_heads, head_dim, dtype=dtype),
                v=rand(num_rows, kv_heads, head_dim_v, dtype=dtype),
                k_cache=rand(num_pages, page_size, kv_heads, head_dim, dtype=cache_dtype),
                v_cache=rand(num_pages, page_size, kv_heads, head_dim_v, dtype=cache_dtype),
                block_offsets=table.to(DEVICE),
                q_start_loc=torch.tensor(starts, dtype=torch.int32, device=DEVICE),
                q_seqlens=torch.tensor(q_lens, dtype=torch.int32, device=DEVICE),
                positions_in_seq=torch.tensor(positions, dtype=torch.int64, device=DEVICE))


def targeted_slots(step):
    """Bool ``[num_pages, page_size]``: slots some row writes."""
    num_pages, page_size = step['k_cache'].shape[:2]
    hit = torch.zeros(num_pages, page_size, dtype=torch.bool)
    table = step['block_offsets'].cpu()
    positions = step['positions_in_seq'].cpu()
    for b, (start, q_len) in enumerate(zip(step['q_start_loc'].tolist(), step['q_seqlens'].tolist())):
        pos = positions[start:start + q_len]
        hit[table[b, pos // page_size].long(), pos % page_size] = True
    return hit.to(DEVICE)


def reference_fill(step, k_cache, v_cache):
    """Upstream's dense fill of the step's rows into ``k_cache`` / ``v_cache`` (in place): the reference."""
    fill_kv_cache(step['k'],
                  step['v'],
                  k_cache,
                  v_cache,
                  step['block_offsets'],
                  step['q_start_loc'],
                  step['q_seqlens'],
                  kv_seqlens=None,
                  positions_in_seq=step['positions_in_seq'])


def fill_and_check(step, seed):
    original_k, original_v = step['k_cache'].clone(), step['v_cache'].clone()
    ref_k, ref_v = original_k.clone(), original_v.clone()
    sparse_fill_kv_cache(**step)
    reference_fill(step, ref_k, ref_v)
    hit = targeted_slots(step)
    print(f'ERR fill rows={step["k"].size(0)} slots_written={int(hit.sum())} '
          f'mismatches={int((step["k_cache"] != ref_k).sum() + (step["v_cache"] != ref_v).sum())} seed={seed}')
    assert torch.equal(step['k_cache'][~hit], original_k[~hit]), f'untouched k slots changed, seed={seed}'
    assert torch.equal(step['v_cache'][~hit], original_v[~hit]), f'untouched v slots changed, seed={seed}'
    assert torch.equal(step['k_cache'], ref_k), f'k cache differs from the reference, seed={seed}'
    assert torch.equal(step['v_cache'], ref_v), f'v cache differs from the reference, seed={seed}'


@pytest.mark.parametrize('head_dims', [(128, 128), (64, 64), (128, 64)])
@pytest.mark.parametrize('page_size', [16, 64])
@pytest.mark.parametrize('block_len', [16, 32, 64])
def test_block_positions_match_reference(gen, block_len, page_size, head_dims):
    step = random_fill_step(gen,
                            block_len=block_len,
                            page_size=page_size,
                            kv_heads=2,
                            head_dim=head_dims[0],
                            head_dim_v=head_dims[1],
                            dtype=torch.bfloat16,
                            cache_dtype=torch.bfloat16,
                            anywhere=False)
    fill_and_check(step, gen.initial_seed())


@pytest.mark.parametrize('dtype,cache_dtype', [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                               (torch.float32, torch.float32)])
@pytest.mark.parametrize('page_size', [16, 64])
def test_arbitrary_positions_match_reference(gen, page_size, dtype, cache_dtype):
    """Positions anywhere in the sequence (history included), so rows cross many pages."""
    step = random_fill_step(gen,
                            block_len=64,
                            page_size=page_size,
                            kv_heads=8,
                            head_dim=128,
                            head_dim_v=128,
                            dtype=dtype,
                            cache_dtype=cache_dtype,
                            anywhere=True)
    fill_and_check(step, gen.initial_seed())


def test_strided_rows_match_reference(gen):
    """k/v as views of a fused qkv projection (non-contiguous rows), as models pass them."""
    step = random_fill_step(gen,
                            block_len=32,
                            page_size=64,
                            kv_heads=8,
                            head_dim=128,
                            head_dim_v=128,
                            dtype=torch.bfloat16,
                            cache_dtype=torch.bfloat16,
                            anywhere=False)
    qkv = torch.randn(step['k'].size(0), 48, 128, device=DEVICE).to(torch.bfloat16)
    qkv[:, 32:40], qkv[:, 40:] = step['k'], step['v']
    step['k'], step['v'] = qkv[:, 32:40], qkv[:, 40:]
    assert not step['k'].is_contiguous()
    fill_and_check(step, gen.initial_seed())


@pytest.mark.filterwarnings('ignore:Synchronization debug mode')
def test_no_host_sync(gen):
    step = random_fill_step(gen,
                            block_len=16,
                            page_size=16,
                            kv_heads=2,
                            head_dim=64,
                            head_dim_v=64,
                            dtype=torch.float16,
                            cache_dtype=torch.float16,
                            anywhere=True)
    # compile first (the compiler may sync), on copies so that the checked fill starts from the original cache
    sparse_fill_kv_cache(**dict(step, k_cache=step['k_cache'].clone(), v_cache=step['v_cache'].clone()))
    ref_k, ref_v = step['k_cache'].clone(), step['v_cache'].clone()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with pytest.raises(RuntimeError):  # the detector is live
            step['q_seqlens'].sum().item()
        sparse_fill_kv_cache(**step)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    reference_fill(step, ref_k, ref_v)
    seed = gen.initial_seed()
    assert torch.equal(step['k_cache'], ref_k), f'k cache differs from the reference, seed={seed}'
    assert torch.equal(step['v_cache'], ref_v), f'v cache differs from the reference, seed={seed}'


@pytest.mark.parametrize('dtype_name', ['int8', 'uint8', 'float8_e4m3fn', 'float8_e5m2'])
def test_quantised_cache_is_rejected(dtype_name):
    cache = torch.zeros(2, 16, 1, 64, dtype=getattr(torch, dtype_name), device=DEVICE)
    rows = torch.zeros(1, 1, 64, dtype=torch.bfloat16, device=DEVICE)
    one = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(NotImplementedError, match='quantised'):
        sparse_fill_kv_cache(rows, rows, cache, cache, one[:, None], one - 1, one, one.long())
