"""SDAR with token-level delayed cache (registered for ``SDARForCausalLM``).

With delayed cache off it is upstream's model unchanged. With it on, a decode step forwards only
the processing set of each sequence (ragged rows): ids and positions are gathered from the dense
block before the forward, every layer writes K/V at the processed positions and attends over the
keys up to the rightmost processed one; the agent strategy scatters the outputs back.
"""
from lmdeploy.pytorch.models.sdar import SDARForCausalLM

from .delayed_cache_attention import DelayedCacheAttention


class DelayedCacheSDARForCausalLM(SDARForCausalLM):

    def __init__(self, config, ctx_mgr, dtype=None, device=None):
        super().__init__(config, ctx_mgr, dtype=dtype, device=device)
        factory = ctx_mgr.build_ctx.strategy_factory
        self.delayed_cache_runtime = getattr(factory, 'delayed_cache_runtime', None)
        if self.delayed_cache_runtime is not None:
            head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
            for layer in self.model.layers:
                attn = layer.self_attn
                attn.attn_fwd = DelayedCacheAttention(attn.attn_fwd, self.delayed_cache_runtime, head_dim)

    def prepare_inputs_for_generation(self, past_key_values, inputs_embeds=None, context=None):
        inputs = super().prepare_inputs_for_generation(past_key_values, inputs_embeds=inputs_embeds, context=context)
        runtime = self.delayed_cache_runtime
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
