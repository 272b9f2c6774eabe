"""Fix of upstream's DLLM step inputs (``lmdeploy.pytorch.strategies.dllm.step_inputs.DLLMStepInputs``).

Why: chunked prefill. The last chunk's DLLM mask, the stopping criteria's remaining-token counter and
the sampling delta's ``random_offsets`` reach upstream's in-place updates as inference tensors while
inference mode is off, and ``+= 1`` / the unmasker's writes raise: the engine loop dies (found by
``checks/serving_edge_check.py`` on the H100, stock chunked prefill, 2026-11-23 run 3, at
``DLLMStepInputs.merge_prefill`` / ``step_decode``).

How: :func:`writable` gives a normal copy of such a tensor; :class:`FixedDLLMStepInputs` advances a copy
of ``random_offsets``. The mask and the counter are copied by the agent and stopping fixes
(:mod:`.stopping`) with the same helper.

Removed by: upstream making those tensors outside inference mode or updating them out of place.
"""
from dataclasses import replace

import torch
from lmdeploy.pytorch.strategies.dllm.step_inputs import DLLMStepInputs


def writable(tensor):
    """``tensor``, or a normal copy of it when it is an inference tensor and inference mode is off
    (upstream updates it in place next)."""
    if tensor is not None and tensor.is_inference() and not torch.is_inference_mode_enabled():
        return tensor.clone()
    return tensor


def _writable_delta(sampling_delta):
    return replace(sampling_delta, random_offsets=writable(sampling_delta.random_offsets))


class FixedDLLMStepInputs(DLLMStepInputs):
    """Upstream's decode state, advancing a copy of ``random_offsets`` when it is an inference tensor
    while inference mode is off (``+= 1`` raised there and the engine loop died)."""

    def merge_prefill(self, inputs, extra_inputs, stopping_criteria, sampling_delta, *args, **kwargs):
        return super().merge_prefill(inputs, extra_inputs, stopping_criteria, _writable_delta(sampling_delta),
                                     *args, **kwargs)

    def step_decode(self, model_inputs, extra_inputs, stopping_criteria, sampling_delta, *args, **kwargs):
        return super().step_decode(model_inputs, extra_inputs, stopping_criteria, _writable_delta(sampling_delta),
                                   *args, **kwargs)
