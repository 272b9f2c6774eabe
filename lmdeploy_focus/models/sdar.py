"""SDAR and SDAR-MoE with token-level delayed cache and FOCUS (registered for ``SDARForCausalLM`` and
``SDARMoeForCausalLM``; both upstream models share the module layout the mixin relies on).

With delayed cache off it is upstream's model unchanged. With it on, a decode step's forward is
:mod:`.sparse_step` (run by :class:`~.step_graphs.StepGraphs`: from CUDA graphs captured at
upstream's decode warm-up unless the engine is eager; a bucket a graph reset dropped while serving is captured
again at its next step): only the processing set of each sequence is
forwarded, FOCUS drops evicted rows inside layer 1, and the LM head runs on the rows that need logits
(the sampler and the unmasker then work on those rows only).
"""
import time

from lmdeploy.pytorch.models.sdar import SDARForCausalLM
from lmdeploy.pytorch.models.sdar_moe import SDARMoeForCausalLM

from ..log import logger
from .delayed_cache_attention import DelayedCacheAttention
from .step_graphs import StepGraphs


class SDARDecoderParts:
    """How FOCUS's decode forward drives upstream's SDAR modules (see ``sparse_step.DecoderParts``)."""

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
        runtime = self.delayed_cache_runtime = getattr(factory, 'delayed_cache_runtime', None)
        if runtime is not None:
            head_dim = getattr(config, 'head_dim', None) or config.hidden_size // config.num_attention_heads
            for idx, layer in enumerate(self.model.layers):
                attn = layer.self_attn
                attn.attn_fwd = DelayedCacheAttention(attn.attn_fwd, runtime, head_dim, idx)
            parts = SDARDecoderParts(self.model, self.model.layers[0].self_attn.attn_fwd.scale)
            # MoE (SDAR-MoE, LLaDA2): padding rows reach the experts too, so they are zeros (StepConfig.zero_padding)
            self.step_graphs = StepGraphs(parts, runtime.step_config(), runtime.attending,
                                          moe=bool(getattr(config, 'num_experts', None)))

    def forward(self, input_ids, position_ids, past_key_values, attn_metadata=None, inputs_embeds=None, **kwargs):
        runtime = self.delayed_cache_runtime
        if (runtime is not None and inputs_embeds is None and self.ctx_mgr.current_context().is_decoding
                and not runtime.stock_step(input_ids.numel())):  # a small batch's stock step: upstream's forward
            if runtime.decode_batch_matches(input_ids.numel()):
                dropped = self.step_graphs.dropped_bucket(input_ids.numel() // runtime.block_length)
                if dropped is not None:  # a graph reset while serving (a weight update): this bucket again, once
                    self.recapture_decode_step(dropped, past_key_values, attn_metadata)
                hidden = runtime.run_step(self.step_graphs, input_ids.flatten(), past_key_values,
                                          attn_metadata.block_offsets, attn_metadata)
                return hidden[None]
            if self.step_graphs.enabled and runtime.serving_idle():  # upstream's decode warm-up: capture
                self.capture_decode_step(input_ids.numel() // runtime.block_length, past_key_values, attn_metadata)
        return super().forward(input_ids, position_ids, past_key_values, attn_metadata=attn_metadata,
                               inputs_embeds=inputs_embeds, **kwargs)

    def get_logits(self, hidden_states):
        runtime = self.delayed_cache_runtime
        step = None if runtime is None else runtime.step
        if step is None or hidden_states.size(-2) != step.num_rows:
            return super().get_logits(hidden_states)
        # LM head on the rows that need logits only; the sampler and the unmasker work on those rows.
        logits = runtime.row_logits(hidden_states.flatten(0, -2), super().get_logits)
        runtime.mark_phase('lm_head')
        return logits.view(*hidden_states.shape[:-2], -1, logits.size(-1))

    def capture_decode_step(self, batch_bucket: int, past_key_values, attn_metadata) -> None:
        """The decode step's graphs for a batch bucket, and (α auto) the controller's update graph: at warm-up, or at
        the bucket's next step after a graph reset while serving."""
        runtime = self.delayed_cache_runtime
        self.step_graphs.capture(batch_bucket, past_key_values, attn_metadata)
        runtime.capture_controller(self.step_graphs.replayable, past_key_values[0][0].device)

    def recapture_decode_step(self, batch_bucket: int, past_key_values, attn_metadata) -> None:
        """A batch bucket a graph reset dropped while serving, captured at its next step; that step waits for the
        capture (about 1/N of the decode warm-up's time, N the batch buckets), as upstream's runner captures its own
        graph at its next step. A bucket whose capture fails is forgotten (its batches take the next larger one)."""
        start = time.perf_counter()
        try:
            self.capture_decode_step(batch_bucket, past_key_values, attn_metadata)
        except Exception as error:  # noqa: BLE001  e.g. out of memory after a weight update: eager, not down
            self.step_graphs.forget(batch_bucket)
            logger.warning(f'sparse decode step: batch bucket {batch_bucket} could not be captured again after a graph '
                           f'reset ({type(error).__name__}: {error}); its batches replay the next larger bucket, or '
                           'run eagerly above every bucket, until the next warm-up.')
            return
        logger.warning(f'sparse decode step: batch bucket {batch_bucket} captured again after a graph reset (a weight '
                       f'update while serving) in {time.perf_counter() - start:.2f} s; this step waited for it.')

    def reset_step_graphs(self):
        """Called by upstream's graph-runner reset (patch 14): sleep, weight update, release."""
        if self.delayed_cache_runtime is not None:
            self.step_graphs.reset()
            self.delayed_cache_runtime.drop_controller_graph()

    def support_cuda_graph(self, *args, **kwargs):
        if self.delayed_cache_runtime is None:
            return super().support_cuda_graph(*args, **kwargs)
        # Upstream's graph runner asks only when graphs are on. Decode steps then run from the
        # plugin's own graphs (captured at warm-up, replayed inside forward), never from upstream's
        # one-graph capture, whose buffers would only cost memory; except a small batch's stock step
        # (--dllm-stock-step-rows), which is upstream's step and replays upstream's graph of its bucket.
        self.step_graphs.enabled = True
        if not super().support_cuda_graph(*args, **kwargs):
            return False
        runtime, num_tokens = self.delayed_cache_runtime, _input_ids(*args, **kwargs).numel()
        runtime.note_graph_batch(num_tokens // runtime.block_length)
        return runtime.stock_step(num_tokens)


def _input_ids(input_ids, *args, **kwargs):
    """``support_cuda_graph``'s first argument, passed by name or by position."""
    return input_ids


class DelayedCacheSDARForCausalLM(DelayedCacheDLLMMixin, SDARForCausalLM):
    pass


class DelayedCacheSDARMoeForCausalLM(DelayedCacheDLLMMixin, SDARMoeForCausalLM):
    pass
