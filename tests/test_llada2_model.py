"""LLaDA2.0 specifics: the routing rule, partial rotary, checkpoint names, refused variants.

The engine path against the reference is in test_model_families (stock decoding) and
test_delayed_cache_replay / test_focus_replay (delayed cache, FOCUS).
"""
import dataclasses
import math
import secrets

import pytest
import torch

from test_model_families import assert_engine_replays_reference_decoding

from lmdeploy_focus.models.llada2 import LLaDA2MoeModelLM
from lmdeploy_focus_dev.reference.llada2_model import LLaDA2Reference
from lmdeploy_focus_dev.reference.moe import noaux_tc_route
from lmdeploy_focus_dev.testing.llada2_cpu import (TinyLLaDA2Shape, build_tiny_llada2, random_llada2_weights,
                                               tiny_llada2_hf_config)
from lmdeploy_focus_dev.testing.tiny_model import build_tiny_model


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _route(scores, bias, **kw):
    """Route one row whose sigmoid scores are ``scores`` (identity router: hidden = logits)."""
    logits = torch.tensor([[_logit(s) for s in scores]], dtype=torch.float64)
    eye = torch.eye(len(scores), dtype=torch.float64)
    args = dict(top_k=2, n_group=4, topk_group=1, scoring='sigmoid', norm_topk_prob=True, scaling=2.5)
    args.update(kw)
    experts, weights = noaux_tc_route(logits, eye, torch.tensor(bias, dtype=torch.float32), **args)
    return sorted(experts[0].tolist()), weights[0]


def test_router_ranks_groups_by_their_two_best_scores():
    # group 0 has the single best expert (0.9) but group 1 the best pair (0.6 + 0.6 > 0.9 + 0.1)
    scores = [0.9, 0.1, 0.6, 0.6, 0.2, 0.2, 0.3, 0.1]
    experts, _ = _route(scores, [0.0] * 8)
    assert experts == [2, 3]
    # without grouping the two best experts overall win
    experts, _ = _route(scores, [0.0] * 8, n_group=1, topk_group=1)
    assert experts == [0, 2] or experts == [0, 3]


def test_router_bias_chooses_experts_but_does_not_weight_them():
    scores = [0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1, 0.1]
    bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]  # lifts group 3 above group 0 for selection
    experts, weights = _route(scores, bias)
    assert experts == [6, 7]
    # weights: the unbiased scores (0.1, 0.1) renormalised, times routed_scaling_factor
    torch.testing.assert_close(weights.double(), torch.tensor([1.25, 1.25], dtype=torch.float64))
    _, raw = _route(scores, bias, norm_topk_prob=False)
    torch.testing.assert_close(raw.double(), torch.tensor([0.25, 0.25], dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_engine_matches_the_reference_without_qk_norm():
    """``use_qk_norm=False`` (published LLaDA2.0 has the norms; the default shape is in test_model_families)."""
    tiny = build_tiny_llada2(TinyLLaDA2Shape(use_qk_norm=False), block_length=4)
    assert_engine_replays_reference_decoding(tiny, LLaDA2Reference(tiny.weights_as(torch.float64), tiny.hf_config))


def test_partial_rotary_leaves_the_upper_head_features_unrotated():
    """Position changes must not touch q/k features past ``partial_rotary_factor * head_dim``."""
    tiny = build_tiny_llada2(block_length=4)
    attn = tiny.model.model.layers[0].self_attn
    rotary = tiny.model.model.rotary_emb
    q = torch.randn(2, 4, 16, dtype=torch.float64)
    k = torch.randn(2, 2, 16, dtype=torch.float64)
    outs = []
    for pos in (torch.tensor([[0, 1]]), torch.tensor([[7, 30]])):
        cos, sin = rotary(q, pos)
        outs.append(attn.apply_rotary_pos_emb(q.clone(), k.clone(), cos[0], sin[0]))
    (q0, k0), (q1, k1) = outs
    assert torch.equal(q0[..., 8:], q1[..., 8:]) and torch.equal(k0[..., 8:], k1[..., 8:])
    assert not torch.allclose(q0[..., :8], q1[..., :8])


def test_checkpoint_names_load_completely():
    """Every tensor our random-checkpoint writer emits for LLaDA2 (the published names) lands in a
    parameter, and every parameter is loaded: NaN-filled parameters must all be overwritten."""
    from lmdeploy_focus_dev.tools.arch_specs import MoESpec, get_arch_spec
    from lmdeploy_focus_dev.tools.weight_layouts import tensor_specs
    shape = TinyLLaDA2Shape()
    spec = dataclasses.replace(get_arch_spec('llada2-mini'), hidden_size=shape.hidden_size, num_layers=3,
                               num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
                               intermediate_size=shape.intermediate_size, vocab_size=shape.vocab_size,
                               moe=MoESpec(num_experts=shape.num_experts, num_experts_per_tok=3, num_shared_experts=1,
                                           moe_intermediate_size=shape.moe_intermediate_size, first_k_dense_replace=1,
                                           n_group=4, topk_group=2, routed_scaling_factor=2.5))
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    written = {t.name: torch.randn(t.shape, generator=gen) for t in tensor_specs(spec)}

    def checkpoint(hf_config, generator):
        return written

    tiny = build_tiny_model(tiny_llada2_hf_config(shape), checkpoint, block_length=4, dtype='float64')
    model = tiny.model
    with torch.inference_mode():  # the harness built the parameters in inference mode
        for param in model.parameters():
            param.fill_(float('nan'))
        model.load_weights(iter(written.items()))
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert not torch.isnan(param).any(), f'{name} was not loaded'
    qkv = written['model.layers.1.attention.query_key_value.weight'].double()
    assert torch.equal(params['model.layers.1.self_attn.qkv_proj.weight'], qkv)
    gate_up = params['model.layers.2.mlp.experts.gate_up.weight'][5]
    assert torch.equal(gate_up, torch.cat([written[f'model.layers.2.mlp.experts.5.{p}_proj.weight']
                                           for p in ('gate', 'up')]).double())
    bias = written['model.layers.2.mlp.gate.expert_bias'].float()
    assert torch.equal(params['model.layers.2.mlp.gate.e_score_correction_bias'], bias - bias.min())


def test_unknown_tensors_are_skipped_and_unfilled_parameters_refused(caplog):
    """An extra checkpoint tensor is reported and skipped; a parameter no tensor filled (here: one
    expert's down projection missing) stops the load with an error naming it."""
    tiny = build_tiny_llada2(block_length=4)
    model = tiny.model
    weights = dict(tiny.weights)
    weights['model.layers.0.attention.rotary_extra.weight'] = torch.zeros(3)
    with torch.inference_mode():
        model.load_weights(iter(weights.items()))
        model.process_weights_after_loading()  # complete: only the warning
        assert 'rotary_extra' in caplog.text
        del weights['model.layers.2.mlp.experts.7.down_proj.weight']
    # a first load (a new model) without that tensor
    with pytest.raises(RuntimeError, match='model.layers.2.mlp.experts.down.weight'):
        build_tiny_model(tiny_llada2_hf_config(), lambda config, gen: weights, block_length=4)


def test_a_weight_update_may_send_only_the_tensors_that_changed():
    """Upstream's update_params / IPC / distributed weight updates load the tensors they are sent, then run the
    post-load hook: after a complete first load such an update is accepted (it was refused as an incomplete
    checkpoint, found by a bug hunt); a first load that leaves a parameter empty is still refused."""
    from lmdeploy.pytorch.weight_loader.model_weight_loader import process_weights_after_loading
    tiny = build_tiny_llada2(block_length=4)
    update = {'lm_head.weight': torch.randn_like(tiny.weights['lm_head.weight'])}
    with torch.inference_mode():
        tiny.model.load_weights(iter(tiny.weights.items()))
        process_weights_after_loading(tiny.model)
        tiny.model.load_weights(iter(update.items()))
        process_weights_after_loading(tiny.model)
        head = dict(tiny.model.named_parameters())['lm_head.weight']
        assert torch.equal(head, update['lm_head.weight'].to(head.dtype))
    with pytest.raises(RuntimeError, match='did not fill'):  # a first load of the head alone
        build_tiny_model(tiny_llada2_hf_config(), lambda config, gen: update, block_length=4)


def test_unsupported_variants_are_refused():
    config = tiny_llada2_hf_config()
    config.use_qkv_bias = True
    with pytest.raises(NotImplementedError, match='use_qkv_bias'):
        build_tiny_model(config, random_llada2_weights, block_length=4, model_cls=LLaDA2MoeModelLM)
