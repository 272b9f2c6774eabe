"""The sparse KV fill kernel on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

CI has no GPU; this runs small ragged cases against the torch reference on CPU tensors. The
interpreter is picked when a kernel is defined, so the check runs in a fresh process. The ragged
attention kernel is not interpretable with Triton 3.6 (its key loop is bounded by a length loaded
from memory, which the interpreter cannot turn into a Python range); the GPU tests cover it.
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
    from lmdeploy_focus.reference import fill_kv_cache

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


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16', 'float32'])
@pytest.mark.parametrize('head_dim', [64, 128])
def test_sparse_fill_matches_the_reference_under_the_interpreter(dtype, head_dim):
    seed = secrets.randbits(31)
    out = subprocess.run([sys.executable, '-c', CHECK, str(seed), dtype, str(head_dim)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert out.returncode == 0, f'seed {seed}: {out.stderr[-3000:]}'
