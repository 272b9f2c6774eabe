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

from .moe import mix_experts, noaux_tc_route
from .sdar_model import SDARReference, apply_rope, rms_norm


class LLaDA2Reference(SDARReference):
    """LLaDA2 forward from an HF-named weights dict; computes in the dtype of the weights."""

    EMBEDDING = 'model.word_embeddings.weight'
    O_PROJ = 'attention.dense.weight'

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

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        prefix = f'model.layers.{layer}.mlp'
        if layer < getattr(cfg, 'first_k_dense_replace', 0):
            return self.swiglu(prefix, x)
        bias = self.weights.get(f'{prefix}.gate.expert_bias')
        if bias is None:
            bias = torch.zeros(cfg.num_experts, dtype=torch.float32)
        experts, weights = noaux_tc_route(x, self.weights[f'{prefix}.gate.weight'], bias,
                                          top_k=cfg.num_experts_per_tok, n_group=cfg.n_group,
                                          topk_group=cfg.topk_group, scoring=getattr(cfg, 'score_function', 'sigmoid'),
                                          norm_topk_prob=cfg.norm_topk_prob, scaling=cfg.routed_scaling_factor,
                                          router_fp32=getattr(cfg, 'router_dtype', 'fp32') in (None, 'fp32', 'float32'),
                                          margins=self.routing_margins)
        out = mix_experts(x, experts, weights, lambda e, rows: self.swiglu(f'{prefix}.experts.{e}', rows))
        if getattr(cfg, 'num_shared_experts', 0):
            out = out + self.swiglu(f'{prefix}.shared_experts', x)
        return out
