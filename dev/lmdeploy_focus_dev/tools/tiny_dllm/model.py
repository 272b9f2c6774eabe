"""The tiny SDAR as a trainable ``nn.Module`` whose ``state_dict`` keys are the HF names.

Same computation as :class:`lmdeploy_focus_dev.reference.sdar_model.SDARReference` (tested on exported
weights): embedding; per layer input RMSNorm, q/k/v projections, per-head RMSNorm on q and k,
rotate-half RoPE, GQA attention, o-projection + residual, post-attention RMSNorm, SwiGLU + residual;
final RMSNorm; untied ``lm_head``; no biases. Row ``p`` of the logits predicts token ``p`` (no
shift), as SDAR decoding assumes.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask (True =
may attend), so one code path runs on CPU (fp32 tests) and CUDA (bf16 autocast); the mask decides
causal / block-causal / block-diffusion layouts (``objective``). K/V heads are repeated to the query
heads before the call: the masked fused CUDA kernel takes equal head counts.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .sizes import ModelShape


class RMSNorm(nn.Module):
    """RMSNorm computed in at least fp32, returned in the input dtype (like HF's Qwen3)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        x_c = x.to(compute)
        normed = x_c * torch.rsqrt(x_c.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.to(compute)).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T, dim]`` cos and sin of rotate-half RoPE (angles in fp64, as the reference)."""
    inv_freq = 1.0 / theta**(torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, heads, T, dim]``; ``cos``/``sin [T, dim]``."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):

    def __init__(self, s: ModelShape):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, s.num_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, s.num_kv_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.num_heads * s.head_dim, s.hidden_size, bias=False)
        self.q_norm = RMSNorm(s.head_dim, s.rms_norm_eps)
        self.k_norm = RMSNorm(s.head_dim, s.rms_norm_eps)

    def forward(self, x, cos, sin, attn_mask):
        B, T, _ = x.shape

        def heads(proj, count):
            return proj(x).view(B, T, count, self.head_dim).transpose(1, 2)

        q = apply_rope(self.q_norm(heads(self.q_proj, self.num_heads)), cos, sin)
        k = apply_rope(self.k_norm(heads(self.k_proj, self.num_kv_heads)), cos, sin)
        v = heads(self.v_proj, self.num_kv_heads)
        group = self.num_heads // self.num_kv_heads  # query head h reads kv head h // group
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):

    def __init__(self, s: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):

    def __init__(self, s: ModelShape):
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mlp = MLP(s)

    def forward(self, x, cos, sin, attn_mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """``model.*`` of the HF names."""

    def __init__(self, s: ModelShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(s) for _ in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)


class TinySDAR(nn.Module):

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.model = Body(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)

    def init_weights(self, generator: torch.Generator, std: float = 0.02) -> None:
        """normal(0, std) matrices and embedding, ones for norms; drawn from a CPU generator so
        the initial weights do not depend on the training device."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith('norm.weight'):
                    param.fill_(1.0)
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor,
                logits_rows: slice | None = None) -> torch.Tensor:
        """``input_ids [B, T]``, ``positions [T]``, ``attn_mask`` bool ``[T, T]`` (query, key) ->
        logits ``[B, T', vocab]`` of the rows ``logits_rows`` (all by default)."""
        cos, sin = rope_cos_sin(positions, self.shape.head_dim, self.shape.rope_theta)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn_mask)
        if logits_rows is not None:
            x = x[:, logits_rows]
        return self.lm_head(self.model.norm(x))
