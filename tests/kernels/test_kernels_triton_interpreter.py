"""The sparse KV fill and ragged attention kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

CI has no GPU; this runs small ragged cases against the torch reference on CPU tensors. The
interpreter is picked when a kernel is defined, so each check runs in a fresh process.

Ragged attention runs fp32 (the path a float32 engine takes) and fp16; bf16 only on the GPU
(Triton 3.6's interpreter computes bf16 dot products on the raw bits). The interpreter multiplies
with NumPy whatever ``input_precision`` says, so TF32 vs true fp32 is checked by the GPU tests
alone; here the kernel's indexing, masking and online softmax meet the fp32 tolerance. Its key
loop is bounded by a length loaded from memory: Triton 3.6's interpreter turns that into a Python
int with ``int()`` on a shape-(1,) array, which the NumPy here (2.x) refuses, so the check patches
that one conversion (``.item()``) in the interpreter before running.
Skipped when Triton is not installed.
"""
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('triton')

CHECK = textwrap.dedent('''
    import sys
    import torch
    from lmdeploy_focus.kernels.cuda.sparse_fill_kv import sparse_fill_kv_cache
    from lmdeploy_focus.kernels.default import fill_kv_cache

    seed, dtype_name, head_dim = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    L, page, kv_heads = 8, 16, 2
    history = torch.tensor([0, 16, 5, 37])  # block starts at history; a block may straddle pages
    q_lens = torch.tensor([8, 1, 0, 5])
    B = history.numel()
    pages_per_seq = (history + L + page - 1) // page
    table = torch.randperm(int(pages_per_seq.sum()), generator=gen).to(torch.int32)
    block_offsets = torch.zeros(B, int(pages_per_seq.max()), dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq.tolist()):
        block_offsets[b, :n] = table[used:used + n]
        used += n
    shape = (int(pages_per_seq.sum()), page, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    # processed block positions: a random ascending subset of size q_len per sequence
    positions = torch.cat([history[b] + torch.randperm(L, generator=gen)[:q_lens[b]].sort().values for b in range(B)])
    T = int(q_lens.sum())
    q_start = torch.cumsum(q_lens, 0) - q_lens
    k = torch.randn(T, kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(T, kv_heads, head_dim, generator=gen).to(dtype)
    kv_lens = history + L

    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    fill_kv_cache(k, v, ref_k, ref_v, block_offsets, q_start, q_lens, kv_lens, positions_in_seq=positions)
    sparse_fill_kv_cache(k, v, k_cache, v_cache, block_offsets, q_start, q_lens, positions)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v), 'sparse fill differs from the reference'

    print('fill ok', T)
''')


ATTENTION_CHECK = textwrap.dedent('''
    import sys
    import torch
    import triton.runtime.interpreter as interpreter

    # int() of a loaded scalar (a shape-(1,) array in the interpreter): use .item(), which NumPy 2 allows
    _patch_lang_tensor = interpreter._patch_lang_tensor

    def _patch_with_item_index(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, '__index__', lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = _patch_with_item_index

    sys.path.insert(0, sys.argv[2])
    import test_ragged_paged_attention as t
    t.DEVICE = 'cpu'

    gen = torch.Generator().manual_seed(int(sys.argv[1]))
    dtype = getattr(torch, sys.argv[3])
    seed = gen.initial_seed()
    for head_dim, group, page_size in [(64, 1, 16), (128, 4, 16), (64, 2, 32)]:
        b = t.random_batch(gen, batch=6, block_len=16, page_size=page_size, kv_heads=2, group=group,
                           head_dim=head_dim, dtype=dtype, max_history_pages=2)
        t.run_and_compare(b, 16, dtype, seed, f'D={head_dim} G={group} page={page_size}')
    # every q_len class in one batch: empty sequences, q_len 1, q_len = block
    b = t.random_batch(gen, batch=6, block_len=16, page_size=16, kv_heads=1, group=4, head_dim=64, dtype=dtype,
                       max_history_pages=1, q_lens=[0, 1, 16, 0, 5, 16])
    t.run_and_compare(b, 16, dtype, seed, 'edge q_lens')
    b = t.random_batch(gen, batch=4, block_len=16, page_size=16, kv_heads=2, group=2, head_dim=64, dtype=dtype,
                       max_history_pages=1)
    t.run_zero_padding_and_compare(b, 16, dtype, seed, 'rows no sequence owns')
    if dtype == torch.float32:
        t.check_fp32_products_are_not_tf32('cpu')
    print('attention ok')
''')


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_ragged_attention_matches_the_reference_under_the_interpreter(dtype):
    seed = secrets.randbits(31)
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, '-c', ATTENTION_CHECK, str(seed), here, dtype],
                         capture_output=True,
                         text=True,
                         timeout=600,
                         env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert out.returncode == 0, f'seed {seed}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}'


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16', 'float32'])
@pytest.mark.parametrize('head_dim', [64, 128])
def test_sparse_fill_matches_the_reference_under_the_interpreter(dtype, head_dim):
    seed = secrets.randbits(31)
    out = subprocess.run([sys.executable, '-c', CHECK, str(seed), dtype, str(head_dim)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert out.returncode == 0, f'seed {seed}: {out.stderr[-3000:]}'


@pytest.mark.parametrize('rows_dtype, cache_dtype', [('bfloat16', 'float32'), ('float32', 'float16')])
def test_sparse_fill_refuses_a_cache_of_another_dtype(rows_dtype, cache_dtype):
    """Checked before the launch (so on CPU too): bf16 rows into an fp32 cache at page 64 did not compile under
    Triton 3.6 on the H100; the engine's cache always has the model's dtype."""
    import torch

    from lmdeploy_focus.kernels.cuda.sparse_fill_kv import sparse_fill_kv_cache
    rows = torch.zeros(1, 1, 64, dtype=getattr(torch, rows_dtype))
    cache = torch.zeros(2, 64, 1, 64, dtype=getattr(torch, cache_dtype))
    one = torch.ones(1, dtype=torch.int32)
    with pytest.raises(ValueError, match='must have the same dtype'):
        sparse_fill_kv_cache(rows, rows, cache, cache, one[:, None], one - 1, one, one.long())
