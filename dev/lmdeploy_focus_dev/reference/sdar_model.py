"""Plain-torch SDAR (Qwen3-style decoder) over a paged KV cache: the model of the reference decode loop.

Built from HF-named weights and the HF config only (no LMDeploy modules), so it is an independent
oracle for the engine. Architecture: token embedding; per layer input RMSNorm → q/k/v projections →
per-head RMSNorm on q and k → rotate-half RoPE → GQA attention → o-projection + residual →
post-attention RMSNorm → SwiGLU MLP + residual; final RMSNorm; untied ``lm_head``.

A layer is exposed in pieces (:meth:`SDARReference.qkv`, :meth:`write_kv`,
:meth:`attend_and_mlp`) because delayed cache writes K/V at arbitrary block positions between the
projection and the attention, and FOCUS will later drop tokens exactly there, inside layer 1.
Cache writes and attention go through :mod:`lmdeploy_focus.kernels.default.paged_attention` (which
computes attention in fp32); everything else runs in the weights' dtype, except that norms are
computed in at least fp32, as HF's Qwen3 RMSNorm does.
"""
from dataclasses import dataclass

import torch

from lmdeploy_focus.kernels.default.paged_attention import NON_CAUSAL, fill_kv_cache, paged_attention

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k_cache, v_cache), paged layout


@dataclass(frozen=True)
class SDARDims:
    """The config values the forward needs."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float

    @classmethod
    def from_hf_config(cls, hf_config) -> 'SDARDims':
        rope = getattr(hf_config, 'rope_parameters', None) or getattr(hf_config, 'rope_scaling', None) or {}
        rope_type = rope.get('rope_type', rope.get('type', 'default'))
        if rope_type != 'default':
            raise NotImplementedError(f'reference SDAR implements plain RoPE only, config has {rope_type!r}')
        # transformers >= 5 keeps rope_theta in rope_parameters; older configs have it top level
        theta = rope.get('rope_theta', getattr(hf_config, 'rope_theta', None))
        head_dim = getattr(hf_config, 'head_dim', None) or hf_config.hidden_size // hf_config.num_attention_heads
        return cls(num_layers=hf_config.num_hidden_layers,
                   num_heads=hf_config.num_attention_heads,
                   num_kv_heads=hf_config.num_key_value_heads,
                   head_dim=head_dim,
                   vocab_size=hf_config.vocab_size,
                   rms_norm_eps=hf_config.rms_norm_eps,
                   rope_theta=float(theta))


@dataclass
class PagedStep:
    """Where a step's ragged tokens sit in the paged cache (layouts of ``reference.paged_attention``).

    ``kv_positions``: cache position of every row; ``None`` means "the last ``q_len`` positions
    before ``kv_len``" (prefill). Delayed cache passes ``history + p`` (sparse write).
    """
    block_offsets: torch.Tensor  # [B, max_pages]
    q_start_loc: torch.Tensor  # [B]
    q_seqlens: torch.Tensor  # [B]
    kv_seqlens: torch.Tensor  # [B]: keys 0 .. kv_len-1 are attended
    causal_block_size: int | None = NON_CAUSAL
    kv_positions: torch.Tensor | None = None  # [num_tokens]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in at least fp32 and returned in ``x.dtype``."""
    compute = torch.promote_types(x.dtype, torch.float32)
    x_c = x.to(compute)
    normed = x_c * torch.rsqrt(x_c.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.to(compute)).to(x.dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE on ``[n, heads, dim]`` at absolute ``positions [n]`` (angles in fp64)."""
    dim = x.size(-1)
    inv_freq = 1.0 / theta**(torch.arange(0, dim, 2, dtype=torch.float64, device=x.device) / dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, None, :].to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, None, :].to(x.dtype)
    first, second = x[..., :dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-second, first], -1) * sin


class SDARReference:
    """SDAR forward from an HF-named weights dict; computes in the dtype of the weights."""

    EMBEDDING = 'model.embed_tokens.weight'
    O_PROJ = 'self_attn.o_proj.weight'

    def __init__(self, weights: dict[str, torch.Tensor], hf_config):
        self.dims = SDARDims.from_hf_config(hf_config)
        self.weights = weights
        self.dtype = weights[self.EMBEDDING].dtype
        self.scale = self.dims.head_dim**-0.5
        # a list to collect the deciding score gap of every MoE routing (the MoE subclasses fill it; each is a
        # host read): tests set it to skip inputs whose routing is a near tie that rounding could flip
        self.routing_margins: list[float] | None = None
        # the same for every FOCUS importance selection (focus_spec.selection_margin; the decode loop fills it)
        self.selection_margins: list[float] | None = None

    def _w(self, name: str) -> torch.Tensor:
        return self.weights[name]

    def _layer_w(self, layer: int, name: str) -> torch.Tensor:
        return self.weights[f'model.layers.{layer}.{name}']

    # ---- pieces of a forward ------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[n]`` token ids → residual stream ``[n, hidden]``."""
        return self._w(self.EMBEDDING)[input_ids.long()]

    def qkv(self, layer: int, hidden: torch.Tensor, positions: torch.Tensor):
        """Layer input (residual stream) → ``q [n, heads, dim]``, ``k, v [n, kv_heads, dim]``.

        ``q`` and ``k`` are after the per-head RMSNorm and RoPE, i.e. what attention and the cache see.
        """
        d = self.dims
        n = hidden.size(0)
        h = rms_norm(hidden, self._layer_w(layer, 'input_layernorm.weight'), d.rms_norm_eps)
        q = (h @ self._layer_w(layer, 'self_attn.q_proj.weight').T).view(n, d.num_heads, d.head_dim)
        k = (h @ self._layer_w(layer, 'self_attn.k_proj.weight').T).view(n, d.num_kv_heads, d.head_dim)
        v = (h @ self._layer_w(layer, 'self_attn.v_proj.weight').T).view(n, d.num_kv_heads, d.head_dim)
        q = apply_rope(rms_norm(q, self._layer_w(layer, 'self_attn.q_norm.weight'), d.rms_norm_eps), positions,
                       d.rope_theta)
        k = apply_rope(rms_norm(k, self._layer_w(layer, 'self_attn.k_norm.weight'), d.rms_norm_eps), positions,
                       d.rope_theta)
        return q, k, v

    def write_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor, kv_caches: KVCaches, step: PagedStep) -> None:
        """Store the rows' K/V in ``layer``'s paged cache (only rows owned by a sequence)."""
        k_cache, v_cache = kv_caches[layer]
        fill_kv_cache(k, v, k_cache, v_cache, step.block_offsets, step.q_start_loc, step.q_seqlens, step.kv_seqlens,
                      positions_in_seq=step.kv_positions)

    def attend_and_mlp(self, layer: int, hidden: torch.Tensor, q: torch.Tensor, kv_caches: KVCaches,
                       step: PagedStep) -> torch.Tensor:
        """Rest of the layer: attention of ``q`` over the cache, o-proj + residual, MLP + residual.

        ``hidden`` is the layer's input residual stream (same rows as ``q``).
        """
        d = self.dims
        k_cache, v_cache = kv_caches[layer]
        attn = paged_attention(q, k_cache, v_cache, step.block_offsets, step.q_start_loc, step.q_seqlens,
                               step.kv_seqlens, self.scale, causal_block_size=step.causal_block_size)
        hidden = hidden + attn.reshape(hidden.size(0), -1) @ self._layer_w(layer, self.O_PROJ).T
        h = rms_norm(hidden, self._layer_w(layer, 'post_attention_layernorm.weight'), d.rms_norm_eps)
        return hidden + self.mlp(layer, h)

    def swiglu(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """SwiGLU MLP with the ``{prefix}.{gate,up,down}_proj.weight`` tensors."""
        gate = x @ self.weights[f'{prefix}.gate_proj.weight'].T
        up = x @ self.weights[f'{prefix}.up_proj.weight'].T
        return (torch.nn.functional.silu(gate) * up) @ self.weights[f'{prefix}.down_proj.weight'].T

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The layer's feed-forward on its post-attention-normed rows (dense SwiGLU for SDAR)."""
        return self.swiglu(f'model.layers.{layer}.mlp', x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and ``lm_head``: ``[n, hidden]`` → ``[n, vocab]`` (row ``p`` predicts token ``p``)."""
        h = rms_norm(hidden, self._w('model.norm.weight'), self.dims.rms_norm_eps)
        return h @ self._w('lm_head.weight').T

    # ---- whole forward --------------------------------------------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: KVCaches,
                      step: PagedStep) -> torch.Tensor:
        """All layers (each writes its K/V, then attends); returns the last residual stream."""
        hidden = self.embed(input_ids)
        for layer in range(self.dims.num_layers):
            q, k, v = self.qkv(layer, hidden, positions)
            self.write_kv(layer, k, v, kv_caches, step)
            hidden = self.attend_and_mlp(layer, hidden, q, kv_caches, step)
        return hidden

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: KVCaches,
                step: PagedStep) -> torch.Tensor:
        """Logits ``[n, vocab]`` of every row."""
        return self.logits(self.hidden_states(input_ids, positions, kv_caches, step))
