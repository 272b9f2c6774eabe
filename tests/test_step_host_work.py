"""Issue 14 item 2: the plugin's per-step host work does not grow with the batch.

One delayed-cache / FOCUS decode step (forward, row sampling, unmasking, bookkeeping, statistics)
through the CPU harness at two batch sizes, counting what the host does in the plugin's own code:
the Python lines it executes (``sys.settrace``, files under ``lmdeploy_focus/``) and the torch ops it
dispatches (``TorchDispatchMode``). Both must be the same for 2 and 12 sequences: a loop over
sequences or rows on the host would show as a difference. All sequences sit at the same point of
their block, so every branch is taken alike. Not counted: the torch fallbacks of the kernels
(``kernels/default/``), which stand in on CPU for Triton kernels that are one launch each on the GPU
(the paged-attention fallback loops over sequences), and the harness's own bookkeeping
(``lmdeploy_focus_dev``: its page tables are built per sequence, upstream's are not).
"""
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lmdeploy
import lmdeploy_focus
import lmdeploy_focus_dev
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.engine.logits_process import SamplingInputs
from lmdeploy_focus.models.step_state import focus_state, shadow_schedule
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference

L = 8
PLUGIN_DIR = os.path.dirname(lmdeploy_focus.__file__) + os.sep
FALLBACK_DIR = os.path.join(PLUGIN_DIR, 'kernels', 'default') + os.sep
HARNESS_DIR = os.path.dirname(lmdeploy_focus_dev.__file__) + os.sep
UPSTREAM_DIR = os.path.dirname(lmdeploy.__file__) + os.sep


def _not_engine_work() -> bool:
    """The innermost lmdeploy / plugin / harness frame of the op is a fallback kernel or the harness."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith((FALLBACK_DIR, HARNESS_DIR)):
            return True
        if name.startswith((PLUGIN_DIR, UPSTREAM_DIR)):  # the plugin or upstream: engine work
            return False
        frame = frame.f_back
    return False


class _CountOps(TorchDispatchMode):

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not _not_engine_work()
        return func(*args, **(kwargs or {}))


def _plugin_lines():
    """A ``sys.settrace`` tracer counting executed lines in the plugin's files, and its counter."""
    counter = {'lines': 0}

    def local(frame, event, arg):
        if event == 'line':
            counter['lines'] += 1
        return local

    def tracer(frame, event, arg):
        name = frame.f_code.co_filename
        return local if name.startswith(PLUGIN_DIR) and not name.startswith(FALLBACK_DIR) else None

    return tracer, counter


def _step_work(batch_size: int, alpha, padded: bool) -> tuple[int, int]:
    options = {'enable_focus': True, 'focus_alpha': alpha, 'track': True}
    sdar, _ = tiny_model_and_reference('sdar', L, num_layers=3, hf_overrides={'dllm_focus': options})
    runtime = sdar.model.delayed_cache_runtime
    mask_id = sdar.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_STATIC,
                           denoising_steps=L // 2)
    agent = DelayedCacheAgentStrategy(unmasking, mask_id, runtime)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, mask_id, (5, ), generator=gen).tolist()
    runner = sdar.new_runner(page_size=16, num_pages=64)
    if padded:
        runner.capture_step_graphs([16])
    runner.prefill([prompt] * batch_size)  # same prompt: every sequence takes the same branches
    blocks = runner.current_blocks()
    mask = torch.where(blocks == mask_id, focus_state.DLLM_MASKED, focus_state.DLLM_UNMASKED)

    def step():
        runtime.step_inputs = SimpleNamespace(
            delayed_state=DelayedCacheState.fresh(batch_size, L), focus_state=focus_state.FocusState.fresh(batch_size),
            shadow_countdown=shadow_schedule.fresh(batch_size, 2, seed=0, first_index=0), next_rows_bound=None,
            extra_inputs=SimpleNamespace(dllm_mask=mask.flatten()),
            model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        ragged = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        logits, _ = agent.sampling_rows(ragged, SamplingInputs(batch_size=batch_size * L, max_num_logprobs=-1))
        extra = SimpleNamespace(dllm_mask=mask.flatten().clone())
        _, extra = agent.post_sampling(SimpleNamespace(input_ids=blocks.flatten()), logits, logits.argmax(-1), extra)
        agent.make_extra_outputs(extra)

    step()  # first use: lazy state, caches
    tracer, counter = _plugin_lines()
    counting = _CountOps()
    sys.settrace(tracer)
    try:
        with counting:
            step()
    finally:
        sys.settrace(None)
    return counter['lines'], counting.ops


@pytest.mark.parametrize('alpha, padded', [(1.5, False), (1.5, True), ('auto', True)])
def test_plugin_step_work_does_not_grow_with_the_batch(alpha, padded):
    small = _step_work(2, alpha, padded)
    large = _step_work(12, alpha, padded)
    assert small[0] > 100 and small[1] > 50, f'nothing counted: {small}'
    assert large == small, f'plugin lines / torch ops per step: {small} at 2 sequences, {large} at 12'
