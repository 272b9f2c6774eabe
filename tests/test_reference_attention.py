"""The torch paged-attention reference against a naive dense implementation written here.

The naive side never touches the page-table code under test: it keeps every sequence's full K/V
as dense tensors, writes/reads pages with per-token Python indexing, and builds masks from the
definitions (causal: key <= query; block-causal: key before the end of the query's block).
Inputs are fresh random every run; the seed is in every failure message.
"""
import secrets

import pytest
import torch

from lmdeploy_focus.kernels.default import CAUSAL, NON_CAUSAL, fill_kv_cache, gather_kv, paged_attention

ATOL = RTOL = 1e-5


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


# ---- naive side -------------------------------------------------------------------------------


def naive_visible(q_pos: torch.Tensor, k_pos: torch.Tensor, mode) -> torch.Tensor:
    """Mask from the definitions, broadcast over (query, key) positions."""
    if mode == 'non_causal':
        return torch.ones(torch.broadcast_shapes(q_pos.shape, k_pos.shape), dtype=torch.bool)
    if mode == 'causal':
        return k_pos <= q_pos
    block = mode[1]  # ('block', L): every key before the end of the query's block
    end_of_query_block = (q_pos // block + 1) * block
    return k_pos < end_of_query_block


def naive_attention(q, k, v, mode, scale):
    """q [q_len, H, D] at the last q_len positions of k/v [kv_len, Hkv, D]; explicit loops over heads."""
    q_len, num_heads, _ = q.shape
    kv_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    q_pos = torch.arange(kv_len - q_len, kv_len)[:, None]
    mask = naive_visible(q_pos, torch.arange(kv_len)[None, :], mode)
    out = torch.empty(q_len, num_heads, v.size(-1), dtype=torch.float64)
    for h in range(num_heads):
        g = h // group
        scores = (q[:, h].double() @ k[:, g].double().T) * scale
        scores[~mask] = float('-inf')
        out[:, h] = torch.softmax(scores, dim=-1) @ v[:, g].double()
    return out


class NaivePagedBatch:
    """Dense per-sequence K/V plus a scattered page table; pages written token by token."""

    def __init__(self, gen, kv_lens, num_kv_heads, head_dim, page_size, v_head_dim=None):
        v_head_dim = v_head_dim or head_dim
        self.page_size = page_size
        pages_per_seq = [-(-n // page_size) for n in kv_lens]
        num_pages = sum(pages_per_seq) + 3  # spare pages that no sequence owns
        perm = torch.randperm(num_pages, generator=gen).tolist()
        self.pages = [[perm.pop() for _ in range(n)] for n in pages_per_seq]
        self.page_table = torch.zeros(len(kv_lens), max(pages_per_seq + [1]), dtype=torch.int32)
        for b, pages in enumerate(self.pages):
            self.page_table[b, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
        self.k = [torch.randn(n, num_kv_heads, head_dim, generator=gen) for n in kv_lens]
        self.v = [torch.randn(n, num_kv_heads, v_head_dim, generator=gen) for n in kv_lens]
        self.k_cache = torch.full((num_pages, page_size, num_kv_heads, head_dim), float('nan'))
        self.v_cache = torch.full((num_pages, page_size, num_kv_heads, v_head_dim), float('nan'))

    def slot(self, b, pos):
        return int(self.page_table[b, pos // self.page_size]), pos % self.page_size

    def write_dense(self, b, positions):
        for pos in positions:
            page, s = self.slot(b, pos)
            self.k_cache[page, s] = self.k[b][pos]
            self.v_cache[page, s] = self.v[b][pos]


def ragged(tensors):
    """Concatenate per-sequence rows; returns (flat, q_start_loc, q_seqlens)."""
    lens = torch.tensor([t.size(0) for t in tensors], dtype=torch.long)
    return torch.cat(tensors, 0), lens.cumsum(0) - lens, lens


# ---- paged attention --------------------------------------------------------------------------

MODES = {'non_causal': NON_CAUSAL, 'causal': CAUSAL, ('block', 4): 4, ('block', 32): 32}


@pytest.mark.parametrize('mode', list(MODES), ids=str)
@pytest.mark.parametrize('page_size', [16, 64])
@pytest.mark.parametrize('num_heads,num_kv_heads,head_dim', [(8, 2, 64), (4, 4, 128), (6, 1, 16)])
def test_paged_attention_matches_dense(gen, mode, page_size, num_heads, num_kv_heads, head_dim):
    kv_lens = [int(torch.randint(1, 150, (), generator=gen)) for _ in range(3)] + [37, 5, 70]
    # q_len 0, 1, full, and arbitrary partial ones
    q_lens = [0, 1, kv_lens[2], int(torch.randint(1, kv_lens[3] + 1, (), generator=gen)), kv_lens[4], 23]
    batch = NaivePagedBatch(gen, kv_lens, num_kv_heads, head_dim, page_size)
    for b, n in enumerate(kv_lens):
        batch.write_dense(b, range(n))
    qs = [torch.randn(n, num_heads, head_dim, generator=gen) for n in q_lens]
    q, q_start_loc, q_seqlens = ragged(qs)
    q = torch.cat([q, torch.randn(2, num_heads, head_dim, generator=gen)])  # padding rows owned by no sequence
    scale = head_dim**-0.5

    out = paged_attention(q, batch.k_cache, batch.v_cache, batch.page_table, q_start_loc, q_seqlens,
                          torch.tensor(kv_lens), scale, causal_block_size=MODES[mode])

    assert out.shape == (q.size(0), num_heads, head_dim) and out.dtype == q.dtype
    for b in range(len(kv_lens)):
        start, n = int(q_start_loc[b]), q_lens[b]
        expected = naive_attention(qs[b], batch.k[b], batch.v[b], mode, scale).float()
        torch.testing.assert_close(out[start:start + n], expected, atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f'seq {b} (seed {gen.initial_seed()}): {m}')
    assert torch.all(out[-2:] == 0), 'padding rows must stay zero'


def test_block_causal_differs_from_causal_and_non_causal(gen):
    """Guards against the masking modes silently collapsing into one another."""
    batch = NaivePagedBatch(gen, [12], 2, 16, 16)
    batch.write_dense(0, range(12))
    q = torch.randn(8, 4, 16, generator=gen)
    args = (q, batch.k_cache, batch.v_cache, batch.page_table, torch.tensor([0]), torch.tensor([8]),
            torch.tensor([12]), 0.25)
    outs = {name: paged_attention(*args, causal_block_size=size) for name, size in [('none', None), ('causal', 1),
                                                                                    ('block', 4)]}
    assert not torch.allclose(outs['none'], outs['block'])
    assert not torch.allclose(outs['causal'], outs['block'])
    # the last query of each block sees exactly the causal set
    torch.testing.assert_close(outs['block'][[3, 7]], outs['causal'][[3, 7]])


def test_bf16_inputs_are_computed_in_fp32(gen):
    batch = NaivePagedBatch(gen, [40], 2, 64, 16)
    batch.write_dense(0, range(40))
    q = torch.randn(40, 4, 64, generator=gen).bfloat16()
    out = paged_attention(q, batch.k_cache.bfloat16(), batch.v_cache.bfloat16(), batch.page_table,
                          torch.tensor([0]), torch.tensor([40]), torch.tensor([40]), 0.125, causal_block_size=4)
    expected = naive_attention(q.float(), batch.k[0].bfloat16().float(), batch.v[0].bfloat16().float(), ('block', 4),
                               0.125)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=1e-2, rtol=1e-2)


# ---- fill ------------------------------------------------------------------------------------


@pytest.mark.parametrize('page_size', [16, 64])
def test_fill_writes_last_q_len_positions_then_attention_reads_them(gen, page_size):
    """AR / upstream-DLLM fill: history already cached, the step writes its q_len new tokens."""
    kv_lens = [30, 1, 100, 64]
    q_lens = [4, 1, 0, 64]
    batch = NaivePagedBatch(gen, kv_lens, 2, 32, page_size)
    for b, (n, q_len) in enumerate(zip(kv_lens, q_lens)):
        batch.write_dense(b, range(n - q_len))  # history only
    k_new, q_start_loc, q_seqlens = ragged([batch.k[b][n - q:] for b, (n, q) in enumerate(zip(kv_lens, q_lens))])
    v_new, _, _ = ragged([batch.v[b][n - q:] for b, (n, q) in enumerate(zip(kv_lens, q_lens))])
    kv_seqlens = torch.tensor(kv_lens)

    fill_kv_cache(k_new, v_new, batch.k_cache, batch.v_cache, batch.page_table, q_start_loc, q_seqlens, kv_seqlens)

    for b, n in enumerate(kv_lens):
        for pos in range(n):
            page, s = batch.slot(b, pos)
            assert torch.equal(batch.k_cache[page, s], batch.k[b][pos]), (b, pos, gen.initial_seed())
            assert torch.equal(batch.v_cache[page, s], batch.v[b][pos]), (b, pos, gen.initial_seed())
        k, v = gather_kv(batch.k_cache, batch.v_cache, batch.page_table[b], n)
        assert torch.equal(k, batch.k[b]) and torch.equal(v, batch.v[b])

    qs = [torch.randn(q, 4, 32, generator=gen) for q in q_lens]
    q, _, _ = ragged(qs)
    out = paged_attention(q, batch.k_cache, batch.v_cache, batch.page_table, q_start_loc, q_seqlens, kv_seqlens,
                          0.2, causal_block_size=CAUSAL)
    for b in range(len(kv_lens)):
        start = int(q_start_loc[b])
        torch.testing.assert_close(out[start:start + q_lens[b]],
                                   naive_attention(qs[b], batch.k[b], batch.v[b], 'causal', 0.2).float(), atol=ATOL,
                                   rtol=RTOL)


@pytest.mark.parametrize('page_size', [16, 64])
def test_sparse_fill_at_arbitrary_positions(gen, page_size):
    """Delayed-cache fill: only chosen positions are (re)written; everything else is untouched."""
    kv_lens = [48, 20, 130]
    batch = NaivePagedBatch(gen, kv_lens, 2, 16, page_size)
    old_k = [torch.randn_like(k) for k in batch.k]
    old_v = [torch.randn_like(v) for v in batch.v]
    for b, n in enumerate(kv_lens):  # stale values everywhere first
        for pos in range(n):
            page, s = batch.slot(b, pos)
            batch.k_cache[page, s], batch.v_cache[page, s] = old_k[b][pos], old_v[b][pos]
    # unsorted, non-contiguous positions; sequence 1 writes nothing
    chosen = [torch.randperm(n, generator=gen)[:k] for n, k in zip(kv_lens, [7, 0, 33])]
    k_new, q_start_loc, q_seqlens = ragged([batch.k[b][p] for b, p in enumerate(chosen)])
    v_new, _, _ = ragged([batch.v[b][p] for b, p in enumerate(chosen)])
    positions = torch.cat(chosen)

    fill_kv_cache(k_new, v_new, batch.k_cache, batch.v_cache, batch.page_table, q_start_loc, q_seqlens,
                  torch.tensor(kv_lens), positions_in_seq=positions)

    for b, n in enumerate(kv_lens):
        written = set(chosen[b].tolist())
        k, v = gather_kv(batch.k_cache, batch.v_cache, batch.page_table[b], n)
        for pos in range(n):
            src_k, src_v = (batch.k[b], batch.v[b]) if pos in written else (old_k[b], old_v[b])
            assert torch.equal(k[pos], src_k[pos]) and torch.equal(v[pos], src_v[pos]), (b, pos, gen.initial_seed())
    # pages no sequence owns were never written
    owned = {page for pages in batch.pages for page in pages}
    for page in range(batch.k_cache.size(0)):
        if page not in owned:
            assert torch.isnan(batch.k_cache[page]).all()
