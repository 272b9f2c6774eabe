"""An engine recording against the CPU reference loop (``reference_generate``) on the same checkpoint.

The reference runs the recorded prompts (read back from the recording's prefill steps, so both see
the same token ids) with the recording's block length and unmasking rule, and its full-logit step
records are summarised at the recording's probe ids. Prompts run in small chunks: a step record
holds ``[L, vocab]`` logits per sequence, and only the summaries are kept.
"""
from pathlib import Path

import torch

from equivalence.compare_steps import compare_sequences, rule_from_meta
from equivalence.sequences import sequences_from_recording, sequences_from_reference
from equivalence.tolerances import NEAR_TIE_FACTOR


def load_reference_model(checkpoint: str | Path, dtype: torch.dtype = torch.float64):
    """``(SDARReference, hf_config)`` of an HF-format checkpoint directory (``reference.checkpoint``)."""
    from lmdeploy_focus_dev.reference.checkpoint import load_sdar_checkpoint
    loaded = load_sdar_checkpoint(checkpoint, dtype=dtype)
    return loaded.model, loaded.hf_config


def unmasking_config(meta: dict):
    from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
    return DLLMConfig(block_length=meta['block_length'],
                      unmasking_strategy=UnmaskingStrategy.from_str(meta['unmasking_strategy']),
                      denoising_steps=meta['denoising_steps'],
                      confidence_threshold=meta['confidence_threshold'])


def run_reference(model, prompts: list[list[int]], meta: dict, max_new_tokens: int, stop_token_ids: list[int],
                  delayed_cache: bool, commit_mode: str = 'exact', chunk_size: int = 4):
    """Reference sequences (summaries) and generated tokens for ``prompts``, ``chunk_size`` at a time."""
    from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
    probes = torch.tensor(meta['probe_ids'])
    sequences, tokens = [], []
    for start in range(0, len(prompts), chunk_size):
        chunk = prompts[start:start + chunk_size]
        results = reference_generate(model, chunk, meta['block_length'], meta['mask_token_id'], unmasking_config(meta),
                                     max_new_tokens, stop_token_ids=stop_token_ids, delayed_cache=delayed_cache,
                                     commit_mode=commit_mode, record_steps=True)
        sequences.extend(sequences_from_reference(results, chunk, probes))
        tokens.extend(r.token_ids for r in results)
        del results  # full logits of every step: drop them before the next chunk
    return sequences, tokens


def compare_to_reference_sequences(recording_dir, reference: list, factor: float = NEAR_TIE_FACTOR) -> dict:
    """Engine recording (A) vs reference sequences (B, e.g. from :func:`run_reference`), paired by prompt."""
    from lmdeploy_focus_dev.testing.step_recorder import load_meta, load_steps
    meta = load_meta(recording_dir)
    engine = sequences_from_recording(load_steps(recording_dir), meta['mask_token_id'])
    result = compare_sequences(engine.sequences, reference, rule_from_meta(meta), torch.tensor(meta['probe_ids']),
                               factor)
    result['summary'].update(orphan_rows=engine.orphan_rows, engine_strategy=meta.get('strategy_class'))
    return result


def compare_with_reference(recording_dir, model, max_new_tokens: int, stop_token_ids: list[int] | None,
                           delayed_cache: bool, commit_mode: str = 'exact', factor: float = NEAR_TIE_FACTOR,
                           chunk_size: int = 4) -> dict:
    """Run the reference in this process on the recorded prompts, then compare (A = engine, B = reference)."""
    from lmdeploy_focus_dev.testing.step_recorder import load_meta, load_steps
    meta = load_meta(recording_dir)
    recording = sequences_from_recording(load_steps(recording_dir), meta['mask_token_id'])
    prompts = [s.prompt_ids for s in recording.sequences]
    reference, tokens = run_reference(model, prompts, meta, max_new_tokens, stop_token_ids, delayed_cache, commit_mode,
                                      chunk_size)
    result = compare_to_reference_sequences(recording_dir, reference, factor)
    result['summary'].update(reference=dict(delayed_cache=delayed_cache, commit_mode=commit_mode,
                                            dtype=str(model.dtype).replace('torch.', '')))
    result['reference_tokens'] = tokens
    return result
