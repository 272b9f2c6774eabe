"""SDAR and SDAR-MoE with token-level delayed cache and FOCUS (registered for ``SDARForCausalLM`` and
``SDARMoeForCausalLM``; both upstream models share the module layout the mixin relies on).

With delayed cache off it is upstream's model unchanged. With it on, a decode step forwards only
the processing set of each sequence (ragged rows): ids and positions are gathered from the dense
block before the forward, every layer writes K/V at the processed positions and attends over the
keys up to the rightmost processed one; the agent strategy scatters the outputs back. With FOCUS,
the decode forward is :func:`~.focus_forward.focus_decode_forward`, which drops evicted rows
inside layer 1.
"""
from lmdeploy.pytorch.models.sdar import SDARForCausalLM
from lmdeploy.pytorch.models.sdar_moe import SDARMoeForCausalLM

from .delayed_cache_attention import DelayedCacheAttention
from .focus_forward import focus_decode_forward


class SDARDecoderParts:
    """How FOCUS's decode forward drives upstream's SDAR modules (see ``focus_forward.DecoderParts``)."""

    def __init__(self, model, scale: float):
        self.model = model  # upstream SDARModel
        self.layers = model.layers
        self.scale = scale

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def rotary(self, hidden, position_ids):
        cos, sin = self.model.rotary_emb(hidden, position_ids)
        return cos[0], sin[0]

    def attention_inputs(self, layer, hidden, residual, rotary):
        """Input norm (+ residual add), fused QKV, per-head q/k norm, RoPE: what attention sees."""
        if residual is None:
            residual, hidden = hidden, layer.input_layernorm(hidden)
        else:
            hidden, residual = layer.input_layernorm(hidden, residual)
        attn = layer.self_attn
        qkv = attn.qkv_proj(hidden).flatten(0, -2)
        q, k, v = attn.qkv_proj.split_qkv(qkv)
        q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = attn.apply_rotary_pos_emb(q, k, *rotary)
        return q, k, v, residual

    def attention_output_and_mlp(self, layer, attn_out, residual):
        hidden = layer.self_attn.o_proj(attn_out)
        hidden, residual = layer.post_attention_layernorm(hidden, residual)
        return layer.mlp(hidden), residual

    def final_norm(self, hidden, residual):
        return self.model.norm(hidden, residual)[0]


class DelayedCacheDLLMMixin:
    """Delayed cache + FOCUS on top of an upstream SDAR-family ``*ForCausalLM`` (put it first in the bases)."""

    def __init__(self, config, ctx_mgr, dtype=None, device=None):
        super().__init__(config, ctx_mgr, dtype=dtype, device=device)
        factory = ctx_mgr.build_ctx.strategy_factory
        self.delayed_cache_runtime = getattr(factory, 'delayed_cache_runtime', None)
        if self.delayed_cache_runtime is not None:
            head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
            for idx, layer in enumerate(self.model.layers):
                attn = layer.self_attn
                attn.attn_fwd = DelayedCacheAttention(attn.attn_fwd, self.delayed_cache_runtime, head_dim, idx)
            self.decoder_parts = SDARDecoderParts(self.model, self.model.layers[0].self_attn.attn_fwd.scale)

    def forward(self, input_ids, position_ids, past_key_values, attn_metadata=None, inputs_embeds=None, **kwargs):
        runtime = self.delayed_cache_runtime
        step = None if runtime is None else runtime.step
        if step is None or step.focus is None or inputs_embeds is not None:
            return super().forward(input_ids, position_ids, past_key_values, attn_metadata=attn_metadata,
                                   inputs_embeds=inputs_embeds, **kwargs)
        return focus_decode_forward(self.decoder_parts, step, input_ids, position_ids, past_key_values, attn_metadata)

    def get_logits(self, hidden_states):
        runtime = self.delayed_cache_runtime
        step = None if runtime is None else runtime.step
        if step is None or step.logits_scattered or hidden_states.size(-2) != step.num_rows:
            return super().get_logits(hidden_states)
        # LM head on the processed (kept) rows only; the sampler gets them at their B*L slots.
        runtime.mark_phase('deep_layers')
        lm_head = super().get_logits
        dense = runtime.dense_logits(hidden_states.flatten(0, -2), lm_head)
        dense = dense.view(*hidden_states.shape[:-2], -1, dense.size(-1))
        runtime.mark_phase('lm_head')
        return dense

    def prepare_inputs_for_generation(self, past_key_values, inputs_embeds=None, context=None):
        inputs = super().prepare_inputs_for_generation(past_key_values, inputs_embeds=inputs_embeds, context=context)
        runtime = self.delayed_cache_runtime
        if runtime is not None and not context.is_decoding:
            runtime.release_logits_buffer()
        if (runtime is None or not context.is_decoding or inputs_embeds is not None
                or not runtime.decode_batch_matches(context.input_ids.numel())):
            return inputs
        step = runtime.begin_step(context.input_ids.flatten())
        inputs['input_ids'] = step.meta.input_ids[None]
        inputs['position_ids'] = step.meta.position_ids[None]
        return inputs

    def support_cuda_graph(self, *args, **kwargs):
        # Ragged decode steps change shape with the processing set: run them eagerly.
        if self.delayed_cache_runtime is not None and self.delayed_cache_runtime.step is not None:
            return False
        return super().support_cuda_graph(*args, **kwargs)


class DelayedCacheSDARForCausalLM(DelayedCacheDLLMMixin, SDARForCausalLM):
    pass


class DelayedCacheSDARMoeForCausalLM(DelayedCacheDLLMMixin, SDARMoeForCausalLM):
    pass
