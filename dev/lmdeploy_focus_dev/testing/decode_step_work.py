"""One delayed-cache / FOCUS decode step of the tiny CPU model, ready to run again and again.

The whole per-step path the engine takes (forward with its front / read / deep, row sampling,
guarded unmasking, bookkeeping, statistics), through the CPU harness: what
``tests/test_step_host_work.py`` counts and ``lmdeploy_focus_dev.tools.step_host_ops`` attributes.
All sequences share one prompt, so every sequence takes the same branches.
"""
import collections
import os
import sys
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lmdeploy
import lmdeploy_focus

from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.engine.logits_process import SamplingInputs
from lmdeploy_focus.config.options import OPTIONS_KEY
from lmdeploy_focus.models.step_state import focus_state, shadow_schedule
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy

from .families import tiny_model_and_reference
from .step_inputs_stub import step_inputs_stub


class DecodeStepWork:
    """``prepare()`` sets the step's inputs up afresh (the harness's part: fresh per-sequence state, as the
    engine holds it in the middle of a block); ``run()`` is the engine's step on them; calling it does both.
    Count ``run()`` alone: the fresh state is built by plugin functions, which a counter would bill to the step."""

    def __init__(self, prepare, run, sync_free: bool):
        self.prepare, self.run = prepare, run
        self.sync_free = sync_free  # the step reads no row counts (a small batch: StepGraphs.sync_free_rows)

    def __call__(self):
        self.prepare()
        self.run()


def decode_step(batch_size: int, alpha, padded: bool, block_length: int = 8,
                sync_free_rows: int | None = None) -> DecodeStepWork:
    """One decode step of ``batch_size`` sequences (FOCUS at ``alpha``, a number or 'auto', with statistics
    on), ready to prepare and run again and again; ``padded``: through the captured (here: eager) graph layout of
    a 16-sequence bucket. ``sync_free_rows``: the step graphs' limit for steps that read no row counts (None: the
    engine's default; 0: the step reads)."""
    options = {'enable_focus': True, 'focus_alpha': alpha, 'track': True}
    L = block_length
    sdar, _ = tiny_model_and_reference('sdar', L, num_layers=3, hf_overrides={OPTIONS_KEY: options})
    if sync_free_rows is not None:
        sdar.model.step_graphs.sync_free_rows = sync_free_rows
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

    def prepare():
        runtime.step_inputs = step_inputs_stub(
            delayed_state=DelayedCacheState.fresh(batch_size, L), focus_state=focus_state.FocusState.fresh(batch_size),
            shadow_countdown=shadow_schedule.fresh(batch_size, 2, seed=0, first_index=0), next_rows_bound=None,
            extra_inputs=SimpleNamespace(dllm_mask=mask.flatten()),
            model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))

    def run():
        ragged = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        logits, _ = agent.sampling_rows(ragged, SamplingInputs(batch_size=batch_size * L, max_num_logprobs=-1))
        extra = SimpleNamespace(dllm_mask=mask.flatten().clone())
        _, extra = agent.post_sampling(SimpleNamespace(input_ids=blocks.flatten()), logits, logits.argmax(-1), extra)
        agent.make_extra_outputs(extra)

    return DecodeStepWork(prepare, run, sync_free=sdar.model.step_graphs.steps_sync_free(batch_size))


# ---- what a step's torch ops are, by where they come from -------------------------------------------------------
PLUGIN_DIR = os.path.dirname(lmdeploy_focus.__file__) + os.sep
# torch fallbacks of kernels that are one Triton launch each on the GPU (the paged-attention one loops)
FALLBACK_DIR = os.path.join(PLUGIN_DIR, 'kernels', 'default') + os.sep
HARNESS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # lmdeploy_focus_dev
UPSTREAM_DIR = os.path.dirname(lmdeploy.__file__) + os.sep


def engine_frame(frame):
    """The innermost plugin / upstream frame of an op dispatched under ``frame``, or None where the op is not the
    engine's (a fallback kernel, the harness's own bookkeeping, or no engine frame at all)."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith((FALLBACK_DIR, HARNESS_DIR)):
            return None
        if name.startswith((PLUGIN_DIR, UPSTREAM_DIR)):
            return frame
        frame = frame.f_back
    return None


def inside_step_graph(frame) -> bool:
    """Whether an op runs under a replay of the step's graphs (one CUDA graph launch on the GPU; here eager)."""
    while frame is not None:
        if frame.f_code.co_name == 'replay' and frame.f_code.co_filename.endswith('step_graphs.py'):
            return True
        frame = frame.f_back
    return False


def _site(frame) -> str:
    """``file:line function`` of an engine frame, the path from its package root."""
    path = frame.f_code.co_filename
    root = PLUGIN_DIR if path.startswith(PLUGIN_DIR) else UPSTREAM_DIR
    package = 'lmdeploy_focus/' if root == PLUGIN_DIR else 'lmdeploy/'
    return f'{package}{path[len(root):]}:{frame.f_lineno} {frame.f_code.co_name}'


def launches_a_kernel(func, args, out) -> bool:
    """Whether an aten op (called with ``args``, returning ``out``) ran device work: not a bare allocation or a
    metadata read, and not a view, unless one marked a view made new storage (a composite such as ``to`` or
    ``reshape`` reaches a dispatch mode before it decomposes, and copies when it must)."""
    if func.__name__.startswith(('empty', 'new_empty', 'sym_', '_local_scalar_dense')):
        return False
    if not func.is_view:
        return True
    source = next((a for a in args if isinstance(a, torch.Tensor)), None)
    outputs = out if isinstance(out, (tuple, list)) else (out, )
    return source is not None and any(
        isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()
        for o in outputs)


class EngineOps(TorchDispatchMode):
    """Counts the engine's torch ops (views included) dispatched while active: in total, outside the step's
    graphs, and outside them by source line (``file:line function``, paths from the package root); and, by source
    line, the plugin's own ops under the graphs' replays that launch a kernel (``graph_kernels``: on the GPU each
    is a kernel inside the graph, paced by launch latency where rows are few)."""

    def __init__(self):
        super().__init__()
        self.total = 0
        self.outside_graphs = 0
        self.sites = collections.Counter()
        self.graph_ops = 0  # the plugin's ops under the replays, views and allocations included
        self.graph_kernels = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame = engine_frame(sys._getframe(1))
        out = func(*args, **(kwargs or {}))
        if frame is not None:
            self.total += 1
            if not inside_step_graph(frame):
                self.outside_graphs += 1
                self.sites[_site(frame)] += 1
            elif frame.f_code.co_filename.startswith(PLUGIN_DIR):
                self.graph_ops += 1
                if launches_a_kernel(func, args, out):
                    self.graph_kernels[_site(frame)] += 1
        return out
