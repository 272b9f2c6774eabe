"""Plain-torch LLaDA2.0 (``llada2_moe``) from HF-named weights: an independent oracle for the engine.

Same pieces as :class:`~.sdar_model.SDARReference` (so the reference decode loop, delayed cache and
FOCUS run on it unchanged), with LLaDA2's differences written out from the architecture description
(shared/reference/models-and-data.md, focus-spec §1.2), not from LMDeploy's modules:

* fused ``attention.query_key_value`` (rows: q heads, then k heads, then v heads), per-head
  ``query_layernorm`` / ``key_layernorm`` when ``use_qk_norm``, RoPE on the first
  ``partial_rotary_factor * head_dim`` features only, output projection ``attention.dense``;
* a dense SwiGLU MLP in layers ``< first_k_dense_replace``, else a MoE: router logits in fp32,
  sigmoid (or softmax) scores, ``scores + expert_bias`` used only to choose experts, groups ranked
  by the sum of their two best biased scores, the best ``topk_group`` groups kept, top-k experts
  among them, weights = the *unbiased* scores of those experts, renormalised when
  ``norm_topk_prob`` (and top-k > 1), times ``routed_scaling_factor``; plus the shared experts.
"""
import torch
import torch.nn.functional as F

from .paged_attention import paged_attention
from .sdar_model import SDARReference, apply_rope, rms_norm


def route(hidden: torch.Tensor, gate_weight: torch.Tensor, expert_bias: torch.Tensor, *, top_k: int, n_group: int,
          topk_group: int, scoring: str, norm_topk_prob: bool, scaling: float, router_fp32: bool = True):
    """Expert ids ``[n, top_k]`` and their weights ``[n, top_k]`` for the rows of ``hidden``.

    ``router_fp32``: the logits are fp32 (the checkpoint's ``router_dtype``), also for fp64 weights.
    """
    logits = hidden.to(torch.promote_types(hidden.dtype, torch.float32)) @ gate_weight.to(
        torch.promote_types(gate_weight.dtype, torch.float32)).T
    if router_fp32:
        logits = logits.float()
    scores = logits.sigmoid() if scoring == 'sigmoid' else logits.softmax(-1)
    choice = scores + expert_bias.to(scores.dtype)
    n, num_experts = choice.shape
    grouped = choice.view(n, n_group, num_experts // n_group)
    group_score = grouped.topk(2, dim=-1).values.sum(-1) if grouped.size(-1) > 1 else grouped[..., 0]
    best_groups = group_score.topk(topk_group, dim=-1).indices
    allowed = torch.zeros(n, n_group, dtype=torch.bool, device=hidden.device)
    allowed.scatter_(1, best_groups, True)
    allowed = allowed[:, :, None].expand_as(grouped).reshape(n, num_experts)
    experts = choice.masked_fill(~allowed, float('-inf')).topk(top_k, dim=-1).indices
    weights = scores.gather(1, experts)
    if norm_topk_prob and top_k > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return experts, weights * scaling


class LLaDA2Reference(SDARReference):
    """LLaDA2 forward from an HF-named weights dict; computes in the dtype of the weights."""

    EMBEDDING = 'model.word_embeddings.weight'

    def __init__(self, weights: dict[str, torch.Tensor], hf_config):
        super().__init__(weights, hf_config)
        self.config = hf_config
        self.rope_dim = int(self.dims.head_dim * getattr(hf_config, 'partial_rotary_factor', 1.0))

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rotated = apply_rope(x[..., :self.rope_dim], positions, self.dims.rope_theta)
        return torch.cat([rotated, x[..., self.rope_dim:]], -1)

    def qkv(self, layer: int, hidden: torch.Tensor, positions: torch.Tensor):
        d = self.dims
        n = hidden.size(0)
        h = rms_norm(hidden, self._layer_w(layer, 'input_layernorm.weight'), d.rms_norm_eps)
        qkv = h @ self._layer_w(layer, 'attention.query_key_value.weight').T
        q_rows, kv_rows = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
        q, k, v = qkv.split([q_rows, kv_rows, kv_rows], -1)
        q = q.reshape(n, d.num_heads, d.head_dim)
        k = k.reshape(n, d.num_kv_heads, d.head_dim)
        v = v.reshape(n, d.num_kv_heads, d.head_dim)
        if getattr(self.config, 'use_qk_norm', True):
            q = rms_norm(q, self._layer_w(layer, 'attention.query_layernorm.weight'), d.rms_norm_eps)
            k = rms_norm(k, self._layer_w(layer, 'attention.key_layernorm.weight'), d.rms_norm_eps)
        return self._rope(q, positions), self._rope(k, positions), v

    def _swiglu(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        gate = x @ self.weights[f'{prefix}.gate_proj.weight'].T
        up = x @ self.weights[f'{prefix}.up_proj.weight'].T
        return (F.silu(gate) * up) @ self.weights[f'{prefix}.down_proj.weight'].T

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        prefix = f'model.layers.{layer}.mlp'
        if layer < cfg.first_k_dense_replace:
            return self._swiglu(prefix, x)
        bias = self.weights.get(f'{prefix}.gate.expert_bias')
        if bias is None:
            bias = torch.zeros(cfg.num_experts, dtype=x.dtype)
        experts, weights = route(x, self.weights[f'{prefix}.gate.weight'], bias, top_k=cfg.num_experts_per_tok,
                                 n_group=cfg.n_group, topk_group=cfg.topk_group,
                                 scoring=getattr(cfg, 'score_function', 'sigmoid'),
                                 norm_topk_prob=cfg.norm_topk_prob, scaling=cfg.routed_scaling_factor,
                                 router_fp32=getattr(cfg, 'router_dtype', 'fp32') in (None, 'fp32', 'float32'))
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():
            rows, slot = (experts == e).nonzero(as_tuple=True)
            out.index_add_(0, rows, self._swiglu(f'{prefix}.experts.{e}', x[rows]) * weights[rows, slot, None].to(x))
        if getattr(cfg, 'num_shared_experts', 0):
            out = out + self._swiglu(f'{prefix}.shared_experts', x)
        return out

    def attend_and_mlp(self, layer, hidden, q, kv_caches, step):
        d = self.dims
        k_cache, v_cache = kv_caches[layer]
        attn = paged_attention(q, k_cache, v_cache, step.block_offsets, step.q_start_loc, step.q_seqlens,
                               step.kv_seqlens, self.scale, causal_block_size=step.causal_block_size)
        hidden = hidden + attn.reshape(hidden.size(0), -1) @ self._layer_w(layer, 'attention.dense.weight').T
        h = rms_norm(hidden, self._layer_w(layer, 'post_attention_layernorm.weight'), d.rms_norm_eps)
        return hidden + self.mlp(layer, h)
