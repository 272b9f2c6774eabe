"""The ``reference`` backend of ``python -m lmdeploy_focus.calibrate``: the pure-torch reference decode loop.

Registered under the entry-point group ``lmdeploy_focus.calibrate_backends`` (``dev/pyproject.toml``), so the
runtime's command finds it without importing this package by name. Runs on CPU (fp32 by default) or CUDA;
the loop records each FOCUS step's selection against what the step decoded
(``reference.dllm_decode.SelectionCounts``), and this module sums that into the runtime's ``dllm_track``
counters (``strategies.dllm.run_stats.KEYS``), so both backends report the same quantities.
"""
import contextlib

import torch

from lmdeploy_focus.calibrate.backends import BackendSettings, BackendUnavailable
from lmdeploy_focus.config.options import FocusOptions
from lmdeploy_focus.strategies.dllm.focus_config import focus_config
from lmdeploy_focus.strategies.dllm.run_stats import KEYS

from .devices import NoCudaDevice, resolve_device

DTYPES = {'float32': torch.float32, 'float64': torch.float64, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def _device(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except NoCudaDevice as e:
        raise BackendUnavailable(str(e)) from None


def counts_of(results) -> dict[str, float]:
    """The loop's per-step records summed into the ``dllm_track`` counters (same definitions as the engine:
    the shadow columns count the steps that evicted nothing, shadow mode or auto's shadow steps)."""
    counts = dict.fromkeys(KEYS, 0.0)
    for r in results:
        counts['decode_steps'] += r.num_steps
        counts['generated_tokens'] += sum(r.decoded_per_step)
        counts['processed_tokens'] += sum(r.processed_per_step)
        counts['deep_tokens'] += sum(r.kept_per_step)
        for s in r.selection_per_step or ():
            counts['candidates'] += s.candidates
            counts['kept_candidates'] += s.kept_candidates
            if s.shadow:
                counts['shadow_decoded'] += s.scored_decoded
                counts['shadow_selected_decoded'] += s.scored_selected_decoded
                counts['shadow_random_expected'] += s.scored_random_expected
    return counts


class ReferenceCalibrationBackend:
    name = 'reference'

    def __init__(self, settings: BackendSettings):
        from lmdeploy_focus_dev.reference.checkpoint import load_sdar_checkpoint
        self.settings = settings
        self.device = _device(settings.device)
        dtype = (torch.float32 if self.device.type == 'cpu' else None) if settings.dtype == 'auto' else DTYPES[settings.dtype]
        self.checkpoint = load_sdar_checkpoint(settings.model_path, dtype, self.device)

    def _unmasking(self):
        from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
        s = self.settings
        return DLLMConfig(block_length=s.block_length, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC,
                          denoising_steps=s.block_length, confidence_threshold=s.confidence_threshold)

    def run(self, cell, prompts: list[list[int]], max_new_tokens: list[int]):
        from lmdeploy_focus_dev.reference.dllm_decode import COMMIT_EXACT, reference_generate
        focus = focus_config(FocusOptions.from_dict(cell.focus_options()).resolved())
        s, ckpt = self.settings, self.checkpoint
        results = []
        on_device = self.device if self.device.type != 'cpu' else contextlib.nullcontext()
        for start in range(0, len(prompts), s.batch_size):
            with on_device, torch.inference_mode():
                results += reference_generate(ckpt.model, prompts[start:start + s.batch_size], s.block_length,
                                              ckpt.mask_token_id, self._unmasking(),
                                              max_new_tokens[start:start + s.batch_size],
                                              stop_token_ids=list(s.stop_token_ids), delayed_cache=True,
                                              commit_mode=COMMIT_EXACT, focus=focus)
        return counts_of(results), [list(r.token_ids) for r in results]


def make_backend(settings: BackendSettings) -> ReferenceCalibrationBackend:
    return ReferenceCalibrationBackend(settings)
