"""Upstream's CUDA kernels on LLaDA2's GPU path against our plain-torch reference.

The CPU tests run LLaDA2 on upstream's CPU ops; on the GPU two other upstream Triton kernels do
the LLaDA2-specific work, so they are checked here on LLaDA2.0-mini's sizes:

* ``fused_noaux_tc_routing`` (what ``TritonRouterNoauxTCImpl`` calls for 256 experts / 8 groups,
  sigmoid), fed the expert bias the way our model loads it (:func:`selection_bias`), against
  ``reference.moe.noaux_tc_route`` on the raw bias, negative biases included;
* ``apply_rotary_pos_emb`` in place with cos/sin covering half of a 128-feature head (partial
  rotary), against the reference RoPE on those features and untouched others.

On CUDA the kernels run natively; without CUDA each check runs in a fresh process under Triton's
interpreter (``TRITON_INTERPRET=1``; the routing kernel's autotuner needs a driver, so its plain
kernel is called). Inputs are fresh random each run; the seed is in the failure message.
"""
import os
import secrets
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip('triton')

CHECK = textwrap.dedent('''
    import sys
    import torch
    import lmdeploy.pytorch.kernels.cuda.moe.route_noaux_tc as route_module
    from lmdeploy.pytorch.kernels.cuda.apply_rotary_pos_emb import apply_rotary_pos_emb
    from lmdeploy_focus.models.llada2 import selection_bias
    from lmdeploy_focus_dev.reference.moe import noaux_tc_route
    from lmdeploy_focus_dev.reference.sdar_model import apply_rope

    seed, part, device = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if device == 'cpu':  # interpreter: no driver to autotune against
        route_module._fused_noaux_tc_kernel = route_module._fused_noaux_tc_kernel.fn
    gen = torch.Generator().manual_seed(seed)

    if part == 'routing':
        E, G, TG, K, N = 256, 8, 4, 8, 48
        for offset in (0.0, -0.7, -1.5):  # biased scores positive, mixed, mostly negative
            logits = 2 * torch.randn(N, E, generator=gen)
            bias = offset + 0.3 * torch.rand(E, generator=gen)
            weights, experts = route_module.fused_noaux_tc_routing(
                logits.to(device), selection_bias(bias).to(device), num_experts=E, n_group=G, topk_group=TG,
                top_k=K, renormalize=True, routed_scaling_factor=2.5)
            ref_experts, ref_weights = noaux_tc_route(logits, torch.eye(E), bias, top_k=K, n_group=G, topk_group=TG,
                                                      scoring='sigmoid', norm_topk_prob=True, scaling=2.5)
            experts, order = experts.cpu().sort(-1)
            ref_sorted, ref_order = ref_experts.sort(-1)
            assert torch.equal(experts, ref_sorted), f'offset {offset}: experts differ'
            torch.testing.assert_close(weights.cpu().gather(1, order), ref_weights.gather(1, ref_order).float(),
                                       atol=1e-5, rtol=1e-5)
        print('routing ok')

    if part == 'rotary':
        n, hq, hk, D, R, theta = 7, 4, 2, 128, 64, 600000.0
        q, k = torch.randn(n, hq, D, generator=gen), torch.randn(n, hk, D, generator=gen)
        pos = torch.randint(0, 32768, (n, ), generator=gen)
        inv_freq = 1.0 / theta**(torch.arange(0, R, 2, dtype=torch.float64) / R)
        angles = pos.double()[:, None] * inv_freq[None]
        cos, sin = torch.cat([angles.cos()] * 2, -1).float(), torch.cat([angles.sin()] * 2, -1).float()
        q_dev, k_dev = q.clone().to(device), k.clone().to(device)
        apply_rotary_pos_emb(q_dev, k_dev, cos.to(device), sin.to(device), q_embed=q_dev, k_embed=k_dev)
        for name, x, out in (('q', q, q_dev.cpu()), ('k', k, k_dev.cpu())):
            expected = apply_rope(x[..., :R].double(), pos, theta).float()
            torch.testing.assert_close(out[..., :R], expected, atol=1e-5, rtol=1e-5, msg=lambda m: f'{name}: {m}')
            assert torch.equal(out[..., R:], x[..., R:]), f'{name}: features past the rotary part changed'
        print('rotary ok')
''')


@pytest.mark.parametrize('part', ['routing', 'rotary'])
def test_upstream_kernel_matches_the_llada2_reference(part):
    seed = secrets.randbits(31)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    env = dict(os.environ)
    if device == 'cpu':
        env['TRITON_INTERPRET'] = '1'
    out = subprocess.run([sys.executable, '-c', CHECK, str(seed), part, device], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0 and f'{part} ok' in out.stdout, f'seed {seed} ({device}):\n{out.stdout}\n{out.stderr}'
