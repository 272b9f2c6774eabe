"""The FOCUS kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

CI has no GPU: this runs the device-agnostic checks of ``test_focus_kernels.py`` on CPU tensors,
small sizes. The interpreter is picked when a kernel is defined, so the checks run in a fresh
process. Importance runs in fp32 and fp16 only: Triton 3.6's interpreter computes bf16 dot
products on the raw bits (it stores bf16 as uint16), so bf16 is covered by the GPU tests alone.
Skipped when Triton is not installed.
"""
import os
import secrets
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('triton')

CHECKS = textwrap.dedent('''
    import sys
    import torch
    sys.path.insert(0, sys.argv[2])
    import test_focus_kernels as t

    gen = torch.Generator().manual_seed(int(sys.argv[1]))
    part = sys.argv[3]
    if part == 'importance':
        for block_len, head_dim, group, dtype in [(16, 64, 1, torch.float32), (16, 128, 2, torch.float16),
                                                  (32, 64, 4, torch.float32), (24, 64, 2, torch.float16)]:
            t.check_importance(gen, 'cpu', batch=5, block_len=block_len, head_dim=head_dim, group=group, dtype=dtype,
                               kv_heads=1)
        t.check_importance(gen, 'cpu', batch=4, block_len=16, head_dim=64, group=1, dtype=torch.float32, kv_heads=2,
                           strided=True, q_lens=[0, 1, 16, 7])
        t.check_fp32_importance_is_not_tf32('cpu')  # the interpreter multiplies in NumPy: its indexing only
    elif part == 'select':
        t.check_targets(gen, 'cpu', 40)
        for block_len in (16, 24, 64):
            for policy in t.FOCUS_POLICIES:
                for kind in ('normal', 'quantised', 'importance'):
                    t.check_select(gen, 'cpu', batch=7, block_len=block_len, policy=policy, delta_kind=kind)
    elif part == 'layout':
        for block_len in (16, 64):
            for from_selection in (True, False):
                t.check_layout(gen, 'cpu', batch=7, block_len=block_len, from_selection=from_selection)
        # small scan chunks: the carries between chunks, and fully masked padding chunks
        import lmdeploy_focus.kernels.cuda.focus_compact as compact
        compact._SCAN_BLOCK = 16
        t.check_layout(gen, 'cpu', batch=7, block_len=16, from_selection=True)
        t.check_layout(gen, 'cpu', batch=40, block_len=8, from_selection=False)
    print('ok', part)
''')


@pytest.mark.parametrize('part', ['importance', 'select', 'layout'])
def test_focus_kernels_match_the_reference_under_the_interpreter(part):
    seed = secrets.randbits(31)
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, '-c', CHECKS, str(seed), here, part],
                         capture_output=True,
                         text=True,
                         timeout=600,
                         env={**os.environ, 'TRITON_INTERPRET': '1'})
    assert out.returncode == 0, f'seed {seed}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}'
