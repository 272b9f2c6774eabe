"""Agent strategy for delayed-cache (and FOCUS) decode steps: the model's logits of the rows that need
them pass through unsliced, upstream's sampler runs on those rows (:meth:`sampling_rows`, patch 17),
guarded unmasking (slots without fresh logits are never unmasked), then the runtime's bookkeeping.

Under TP only the first attention-TP rank samples (``post_sampling``); the others get its next mask
through upstream's broadcast and must do the same bookkeeping from it, or their FOCUS state (block
progress, decode average) and hence their kept rows would drift from rank 0's.
"""
from contextlib import contextmanager

import torch
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy

from .delayed_cache_runtime import DelayedCacheRuntime
from .request_stats import StepStatsOutputs
from .sampling_rows import needs_dense_rows, select_rows
from .stream_wait import wait_for_event
from .upstream_fixes import UpstreamFixesMixin
from .unmasking_guard import RowLogitsUnmasking, unmask_processed_only


class DelayedCacheAgentStrategy(StepStatsOutputs, UpstreamFixesMixin, DLLMModelAgentStrategy):

    def __init__(self, dllm_config, dllm_mask_token: int, runtime: DelayedCacheRuntime):
        super().__init__(dllm_config=dllm_config, dllm_mask_token=dllm_mask_token)
        self.runtime = runtime
        self.unmasking_processor = RowLogitsUnmasking(dllm_config=dllm_config)
        self._awaiting_broadcast = False  # a TP rank that does not sample: its bookkeeping waits for rank 0's mask
        self._sampled_slots = None  # int64 [M]: the slots of the rows the sampler ran on (None: all B*L)
        self.dense_sampling = False  # debug (the step recorder reads every block position's logits)

    async def before_forward(self, inputs) -> None:
        """Patch 18: unless ``$LMDEPLOY_FOCUS_AWAIT_STREAM=0``, a decode forward first awaits the last step's
        deep layers (:mod:`.stream_wait`), so its row-count read does not hold the engine's loop meanwhile."""
        if not inputs.is_decoding or getattr(inputs, 'is_dummy', False):  # prefills and DP dummies read nothing
            return
        event = self.runtime.take_deep_launched()
        if event is not None:
            await wait_for_event(event)

    def slice_outputs(self, inputs, seq_length):
        step = self.runtime.step
        if step is not None and inputs.dim() == 2 and inputs.size(0) in (step.num_rows, max(step.num_logit_rows, 1)):
            # Hidden states of the deep rows, or the logits of the rows that need them: nothing to slice.
            return inputs
        return super().slice_outputs(inputs, seq_length)

    def sampling_rows(self, logits, sampling_inputs, logprobs_mode: str | None = None):
        """What upstream's sampler runs on this step (patch 17): the rows with logits and their sampling
        inputs, or, where the batch needs every block position (:func:`.sampling_rows.needs_dense_rows`),
        those logits at their ``B*L`` slots with the inputs unchanged."""
        runtime = self.runtime
        if runtime.step is None or runtime.logit_slots is None:
            self._sampled_slots = None
            return logits, sampling_inputs
        if self.dense_sampling or needs_dense_rows(sampling_inputs, logprobs_mode):
            self._sampled_slots = None
            return runtime.dense_logits(logits), sampling_inputs
        self._sampled_slots = runtime.logit_slots
        return logits, select_rows(sampling_inputs, runtime.logit_slots)

    def make_dummy_next_token(self, inputs, logits, extra_inputs):
        step = self.runtime.step
        if step is None:
            return super().make_dummy_next_token(inputs, logits, extra_inputs)
        # A TP rank that does not sample: its bookkeeping runs once rank 0's next mask arrives (the step kept
        # its input mask), and rank 0's B*L ids need room (this rank's logits are of the M rows only).
        self._awaiting_broadcast = True
        with torch.inference_mode():  # as upstream's: a plain tensor for the broadcast to write into
            next_token_ids = inputs.input_ids.new_zeros(step.batch_size * step.block_length)
        return next_token_ids, extra_inputs

    @contextmanager
    def broadcast_next_token(self, next_token_ids, extra_inputs, dist_ctx):
        with super().broadcast_next_token(next_token_ids, extra_inputs, dist_ctx) as handle:
            yield handle
        awaiting, self._awaiting_broadcast = self._awaiting_broadcast, False
        if awaiting and self.runtime.step is not None:
            # rank 0's next mask has arrived: the same bookkeeping as its post_sampling
            self.runtime.after_unmasking(extra_inputs.dllm_mask)
            self.runtime.end_step()

    def _stock_decode_step(self, inputs) -> bool:
        """A live decode step that ran as upstream's stock step (``--dllm-stock-step-rows``)."""
        runtime = self.runtime
        return (getattr(inputs, 'is_decoding', False) and not runtime.serving_idle()
                and runtime.stock_step(inputs.input_ids.numel()))

    def post_sampling(self, inputs, logits, next_token_ids, extra_inputs):
        runtime, step = self.runtime, self.runtime.step
        if step is None:
            if not self._stock_decode_step(inputs):  # a prefill or warm-up
                return super().post_sampling(inputs, logits, next_token_ids, extra_inputs)
            # upstream's own unmasking of a stock step (small batch); its counts, as a delayed-cache step's
            input_mask = extra_inputs.dllm_mask.clone() if runtime.stats is not None else None
            next_token_ids, extra_inputs = super().post_sampling(inputs, logits, next_token_ids, extra_inputs)
            self.keep_step_stats(runtime.after_stock_step(input_mask, extra_inputs.dllm_mask))
            return next_token_ids, extra_inputs
        self.runtime.mark_phase('sampling')
        input_ids = inputs.input_ids.flatten()
        input_mask = extra_inputs.dllm_mask
        slots, self._sampled_slots = self._sampled_slots, None
        dllm_mask, next_token_ids = unmask_processed_only(self.unmasking_processor, logits, input_ids, next_token_ids,
                                                          input_mask, step.masked_unprocessed, logit_slots=slots)
        extra_inputs.dllm_mask = dllm_mask
        self.keep_step_stats(self.runtime.after_unmasking(dllm_mask))
        self.runtime.end_step()
        return next_token_ids, extra_inputs
