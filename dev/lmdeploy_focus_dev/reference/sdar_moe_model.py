"""Plain-torch SDAR-MoE (``sdar_moe``, Qwen3-MoE layout) from HF-named weights: the oracle for the engine.

SDAR's attention unchanged (:class:`~.sdar_model.SDARReference`); the feed-forward of a layer is a
MoE unless the layer is in ``mlp_only_layers`` or off the ``decoder_sparse_step`` grid: fp32
softmax router over all experts, top-k, renormalised when ``norm_topk_prob``, no shared expert.
"""
import torch

from .moe import mix_experts, softmax_topk_route
from .sdar_model import SDARReference


class SDARMoeReference(SDARReference):

    def __init__(self, weights: dict[str, torch.Tensor], hf_config):
        super().__init__(weights, hf_config)
        self.config = hf_config

    def is_sparse(self, layer: int) -> bool:
        cfg = self.config
        step = getattr(cfg, 'decoder_sparse_step', 1)
        return (layer not in (getattr(cfg, 'mlp_only_layers', None) or []) and cfg.num_experts > 0
                and (layer + 1) % step == 0)

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        prefix = f'model.layers.{layer}.mlp'
        if not self.is_sparse(layer):
            return self.swiglu(prefix, x)
        cfg = self.config
        experts, weights = softmax_topk_route(x, self.weights[f'{prefix}.gate.weight'], top_k=cfg.num_experts_per_tok,
                                              norm_topk_prob=cfg.norm_topk_prob, margins=self.routing_margins)
        return mix_experts(x, experts, weights, lambda e, rows: self.swiglu(f'{prefix}.experts.{e}', rows))
