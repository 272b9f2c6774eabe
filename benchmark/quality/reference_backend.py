"""Tasks through the pure-torch reference decode loop (``lmdeploy_focus_dev.reference.dllm_decode``).

The oracle of the engine, on CPU (the committed tiny model's test) or CUDA: the same prompts, the
same greedy unmasking (upstream's ``UnmaskingProcessor``), stop tokens and length limits. Arms map
to its options: delayed cache and the commit mode; FOCUS arms need a loop that takes ``focus=``
and are ``missing`` otherwise. Prompts run in batches of ``--concurrency``.

Decode counters come from the loop's per-request results, summed with the engine's definitions: decode
steps, rows into layer 0 and past the eviction layer, tokens decoded, and for FOCUS arms the candidates,
the kept candidates and, over the steps that evicted nothing (shadow mode, auto's shadow steps), the
shadow / random recall counts.
"""
import contextlib
import inspect
import time

import torch
from lmdeploy_focus.calibrate.grid import failure_reason
from throughput.engine_runner import ArmMissing

from .arms import RunSettings, focus_options
from .decode_stats import STAT_KEYS
from .outcome import FAILED, MISSING, OK, CellOutcome

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """``auto``: fp32 on CPU (fast and exact there), the checkpoint's dtype (None) on CUDA."""
    if name == 'auto':
        return torch.float32 if device.type == 'cpu' else None
    return DTYPES[name]


def reference_call_kwargs(arm: str, reference_generate, block_length: int) -> dict:
    """The arm as ``reference_generate`` options; ArmMissing when the loop lacks what it needs."""
    options = focus_options(arm)
    kwargs = dict(delayed_cache=options.enable_delayed_cache, commit_mode=options.delayed_cache_commit)
    if not options.enable_focus:
        return kwargs
    if 'focus' not in inspect.signature(reference_generate).parameters:
        raise ArmMissing('the reference decode loop has no FOCUS eviction (reference_generate takes no focus=)')
    from lmdeploy_focus.strategies.dllm.focus_config import focus_config
    kwargs['focus'] = focus_config(options)
    if not options.auto_alpha:
        return kwargs
    if 'auto_alpha' not in inspect.signature(reference_generate).parameters:
        raise ArmMissing('the reference decode loop has no --dllm-focus-alpha auto (reference_generate takes no '
                         'auto_alpha=)')
    from lmdeploy_focus_dev.reference.auto_alpha import ReferenceAutoAlpha
    # one controller for the whole cell, as one engine would keep over all its requests
    kwargs['auto_alpha'] = ReferenceAutoAlpha(kwargs['focus'], block_length)
    return kwargs


def reference_stats(results: list) -> tuple[dict, str | None]:
    """Decode counters of the loop's results (keys of ``decode_stats.STAT_KEYS``), summed as the engine's
    ``dllm_track`` would (``lmdeploy_focus_dev.calibrate_reference.counts_of``). Without FOCUS the candidate
    and shadow columns stay None (not counted), as they are n/a in the engine's report there."""
    from lmdeploy_focus_dev.calibrate_reference import counts_of
    counts = counts_of(results)
    stats = {key: counts.get(key) for key in STAT_KEYS}
    if all(r.selection_per_step is None for r in results):
        for key in ('candidates', 'kept_candidates', 'shadow_decoded', 'shadow_selected_decoded',
                    'shadow_random_expected'):
            stats[key] = None
    return stats, None


class ReferenceBackend:
    name = 'reference'

    def __init__(self, checkpoint, settings: RunSettings, stop_ids: list, device: torch.device):
        if settings.block_length is None:
            raise ValueError('the reference backend needs the block length: give --block-length')
        self.checkpoint = checkpoint  # lmdeploy_focus_dev.reference.checkpoint.SDARCheckpoint
        self.settings = settings
        self.stop_ids = stop_ids
        self.device = device

    def _unmasking(self, threshold: float | None):
        from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
        s = self.settings
        extra = {} if threshold is None else dict(confidence_threshold=threshold)
        return DLLMConfig(block_length=s.block_length,
                          unmasking_strategy=UnmaskingStrategy.from_str(s.unmasking_strategy),
                          denoising_steps=s.resolved_denoising_steps(),
                          **extra)

    def cell_config(self, arm: str, threshold: float | None) -> dict:
        s = self.settings
        return dict(block_length=s.block_length, unmasking_strategy=s.unmasking_strategy,
                    denoising_steps=s.resolved_denoising_steps(), confidence_threshold=threshold,
                    batch_size=s.concurrency, device=str(self.device), dtype=str(self.checkpoint.model.dtype),
                    focus_options=focus_options(arm).to_dict())

    def _generate(self, reference_generate, prompts: list, unmasking, call_kwargs: dict) -> list:
        ckpt, s = self.checkpoint, self.settings
        results = []
        for start in range(0, len(prompts), s.concurrency):
            batch = prompts[start:start + s.concurrency]
            # the loop builds its tensors with factory defaults: make those land on our device (a
            # per-op dispatch mode, so only where needed: it costs as much as the math on CPU)
            on_device = torch.device(self.device) if self.device.type != 'cpu' else contextlib.nullcontext()
            with on_device, torch.inference_mode():
                results += reference_generate(ckpt.model, [p.input_ids for p in batch], s.block_length,
                                              ckpt.mask_token_id, unmasking, [p.max_new_tokens for p in batch],
                                              stop_token_ids=self.stop_ids, **call_kwargs)
        return results

    def run_cell(self, arm: str, threshold: float | None, prompts: list) -> CellOutcome:
        outcome = CellOutcome(arm, threshold, OK, config=self.cell_config(arm, threshold))
        try:
            from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
            call_kwargs = reference_call_kwargs(arm, reference_generate, self.settings.block_length)
            start = time.perf_counter()
            results = self._generate(reference_generate, prompts, self._unmasking(threshold), call_kwargs)
        except (ArmMissing, NotImplementedError) as e:
            outcome.status, outcome.reason = MISSING, str(e) or type(e).__name__
            return outcome
        except Exception as e:  # noqa: BLE001  one broken cell must not end the evaluation
            outcome.status, outcome.reason = FAILED, failure_reason(e)
            return outcome
        outcome.seconds = round(time.perf_counter() - start, 3)
        outcome.token_ids = [list(r.token_ids) for r in results]
        outcome.errors = [None] * len(results)
        outcome.stats, outcome.stats_note = reference_stats(results)
        if 'auto_alpha' in call_kwargs:  # where the controller ended: α, fall-back, its recall estimates
            outcome.config['auto_alpha'] = call_kwargs['auto_alpha'].report()
        return outcome
