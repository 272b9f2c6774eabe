"""Upstream SDAR on CPU through the harness, checked against a dense forward written here.

The dense side uses only the HF-named weights and the textbook definitions (RMSNorm, per-head
q/k RMSNorm, rotate-half RoPE, block-causal GQA attention, SwiGLU), no upstream or harness code,
and recomputes every sequence in full. Weights and tokens are fresh random every run; the seeds are
in the failure messages.
"""
import secrets
from types import SimpleNamespace

import pytest
import torch
from lmdeploy.pytorch.backends import selector
from lmdeploy.pytorch.models.sdar import SDARForCausalLM

from lmdeploy_focus_dev.testing.cpu_backend_selector import cpu_backend_selected
from lmdeploy_focus_dev.testing.cpu_backend import CpuOpsBackend, step_causal_block_size
from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar

BLOCK = 4
TOL = dict(atol=1e-4, rtol=1e-4)

# ---- dense reference --------------------------------------------------------------------------


def rms_norm(x, weight, eps):
    x64 = x.double()
    return (x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * weight.double())


def rope(x, positions, theta):
    """Rotate-half RoPE on [n, heads, dim]."""
    dim = x.size(-1)
    inv_freq = 1.0 / theta**(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions.double()[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, None, :]
    x1, x2 = x[..., :dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def dense_sdar(weights, cfg, token_ids, block_length):
    """Full-sequence forward in fp64. Returns (logits [n, vocab], [(k, v) per layer] each
    [n, kv_heads, head_dim] as the attention sees them, i.e. k after norm + RoPE)."""
    w = {name: t.double() for name, t in weights.items()}
    eps, heads, kv_heads, dim = cfg.rms_norm_eps, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    theta = cfg.rope_parameters['rope_theta']
    n = len(token_ids)
    positions = torch.arange(n)
    # block-causal: a query sees every key before the end of its own block
    visible = positions[None, :] < (positions[:, None] // block_length + 1) * block_length
    x = w['model.embed_tokens.weight'][torch.tensor(token_ids)]
    kv = []
    for i in range(cfg.num_hidden_layers):
        p = f'model.layers.{i}.'
        h = rms_norm(x, w[p + 'input_layernorm.weight'], eps)
        q = (h @ w[p + 'self_attn.q_proj.weight'].T).view(n, heads, dim)
        k = (h @ w[p + 'self_attn.k_proj.weight'].T).view(n, kv_heads, dim)
        v = (h @ w[p + 'self_attn.v_proj.weight'].T).view(n, kv_heads, dim)
        q = rope(rms_norm(q, w[p + 'self_attn.q_norm.weight'], eps), positions, theta)
        k = rope(rms_norm(k, w[p + 'self_attn.k_norm.weight'], eps), positions, theta)
        kv.append((k, v))
        attn = torch.empty(n, heads, dim, dtype=torch.float64)
        for head in range(heads):
            kv_head = head // (heads // kv_heads)
            scores = (q[:, head] @ k[:, kv_head].T) / dim**0.5
            attn[:, head] = torch.softmax(scores.masked_fill(~visible, float('-inf')), -1) @ v[:, kv_head]
        x = x + attn.reshape(n, heads * dim) @ w[p + 'self_attn.o_proj.weight'].T
        h = rms_norm(x, w[p + 'post_attention_layernorm.weight'], eps)
        gate, up = h @ w[p + 'mlp.gate_proj.weight'].T, h @ w[p + 'mlp.up_proj.weight'].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + 'mlp.down_proj.weight'].T
    logits = rms_norm(x, w['model.norm.weight'], eps) @ w['lm_head.weight'].T
    return logits, kv


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sdar():
    return build_tiny_sdar(block_length=BLOCK)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(secrets.randbits(31))  # gen.initial_seed() reproduces a failure


def random_prompts(gen, vocab_without_mask):
    # short (< one block), a whole number of blocks (gets a full mask block), several pages long
    lengths = [int(torch.randint(1, BLOCK, (), generator=gen)), 2 * BLOCK,
               int(torch.randint(5 * BLOCK, 10 * BLOCK, (), generator=gen))]
    return [torch.randint(0, vocab_without_mask, (n, ), generator=gen).tolist() for n in lengths]


def random_blocks(gen, runner, mask_fraction=0.5):
    """New current blocks: random tokens, about half of the slots still masked."""
    shape = (runner.batch_size, BLOCK)
    tokens = torch.randint(0, runner.mask_token_id, shape, generator=gen)
    masked = torch.rand(shape, generator=gen) < mask_fraction
    return torch.where(masked, torch.full(shape, runner.mask_token_id), tokens)


def where(sdar, gen):
    return f'(weights seed {sdar.seed}, inputs seed {gen.initial_seed()})'


def assert_kv_matches_dense(sdar, runner, gen):
    for b, tokens in enumerate(runner.tokens):
        _, dense_kv = dense_sdar(sdar.weights, sdar.hf_config, tokens, BLOCK)
        for layer, (k, v) in enumerate(dense_kv):
            cached_k, cached_v = runner.kv_cache.read(layer, b, len(tokens))
            torch.testing.assert_close(cached_k.double(), k, **TOL, msg=lambda m: f'K seq {b} layer {layer} '
                                       f'{where(sdar, gen)}: {m}')
            torch.testing.assert_close(cached_v.double(), v, **TOL, msg=lambda m: f'V seq {b} layer {layer} '
                                       f'{where(sdar, gen)}: {m}')


def assert_block_logits_match_dense(sdar, runner, block_logits, gen):
    for b, tokens in enumerate(runner.tokens):
        dense_logits, _ = dense_sdar(sdar.weights, sdar.hf_config, tokens, BLOCK)
        torch.testing.assert_close(block_logits[b].double(), dense_logits[-BLOCK:], **TOL,
                                   msg=lambda m: f'seq {b} (len {len(tokens)}) {where(sdar, gen)}: {m}')


# ---- tests ------------------------------------------------------------------------------------


def test_harness_builds_upstream_sdar_on_cpu_backend(sdar):
    assert isinstance(sdar.model, SDARForCausalLM)
    assert sdar.model_config.model_paradigm == 'dllm' and sdar.block_length == BLOCK
    attn_impl = sdar.model.model.layers[0].self_attn.attn_fwd.impl
    assert type(attn_impl).__module__ == 'lmdeploy_focus_dev.testing.cpu_backend'
    assert attn_impl.block_sparse_size == BLOCK
    assert selector._get_backend.__module__ == selector.__name__, 'harness left the backend patch applied'


def test_backend_selection_is_scoped():
    original = selector._get_backend
    with cpu_backend_selected():
        assert selector._get_backend() is CpuOpsBackend
        with cpu_backend_selected():  # re-entrant
            assert selector._get_backend() is CpuOpsBackend
        assert selector._get_backend() is CpuOpsBackend
    assert selector._get_backend is original


@pytest.mark.parametrize('page_size', [16, 5])
def test_prefill_matches_dense_block_causal_forward(sdar, gen, page_size):
    runner = sdar.new_runner(page_size=page_size)
    prompts = random_prompts(gen, runner.mask_token_id)

    block_logits = runner.prefill(prompts)

    assert block_logits.shape == (3, BLOCK, sdar.hf_config.vocab_size)
    assert runner.last_step_context.attn_metadata.causal_block_size == BLOCK
    assert [len(t) for t in runner.tokens] == [BLOCK, 3 * BLOCK, -(-(len(prompts[2]) + 1) // BLOCK) * BLOCK]
    assert runner.history_lengths == [len(t) - BLOCK for t in runner.tokens]
    assert_block_logits_match_dense(sdar, runner, block_logits, gen)
    assert_kv_matches_dense(sdar, runner, gen)


@pytest.mark.parametrize('page_size', [16, 5])
def test_decode_steps_match_dense_recompute(sdar, gen, page_size):
    runner = sdar.new_runner(page_size=page_size)
    runner.prefill(random_prompts(gen, runner.mask_token_id))

    # two denoising steps on the prompt's last block, then commit and denoise the next block
    for commit_before in [False, False, True]:
        if commit_before:
            runner.commit_blocks()
        history_before = list(runner.history_lengths)
        block_logits = runner.decode_step(random_blocks(gen, runner))

        meta = runner.last_step_context.attn_metadata
        assert meta.is_decoding and meta.causal_block_size is None
        assert meta.kv_seqlens.tolist() == [h + BLOCK for h in history_before]
        assert runner.history_lengths == history_before
        assert_block_logits_match_dense(sdar, runner, block_logits, gen)
        assert_kv_matches_dense(sdar, runner, gen)


def test_decode_depends_on_history(sdar, gen):
    """Same current blocks after different histories must give different logits (the cache is read)."""
    runner_a, runner_b = sdar.new_runner(), sdar.new_runner()
    prompts = random_prompts(gen, runner_a.mask_token_id)
    runner_a.prefill(prompts)
    other = [list(p) for p in prompts]
    other[2][0] = (other[2][0] + 1) % runner_a.mask_token_id  # first token of the long prompt only
    runner_b.prefill(other)
    blocks = random_blocks(gen, runner_a)
    logits_a, logits_b = runner_a.decode_step(blocks), runner_b.decode_step(blocks)
    torch.testing.assert_close(logits_a[:2], logits_b[:2])
    assert not torch.allclose(logits_a[2], logits_b[2], **TOL)


def test_step_masking_rule_by_paradigm():
    def step(paradigm, is_decoding):
        model_config = SimpleNamespace(model_paradigm=paradigm, dllm_block_length=8, hf_config=None)
        return SimpleNamespace(model_config=model_config, is_decoding=is_decoding)

    assert step_causal_block_size(step('dllm', False)) == 8
    assert step_causal_block_size(step('dllm', True)) is None
    assert step_causal_block_size(step('ar', False)) == 1
    assert step_causal_block_size(step('ar', True)) == 1
