"""Per-sequence step lists from an engine recording or from the reference loop's step records.

Engine steps are batch-level (rows of every running sequence); the comparison is per sequence, so
both sources become ``[RecordedSequence]`` whose ``steps[k]`` is the k-th forward of that sequence
(prefill first). Two runs of the same prompts with the same rules then line up step by step as
long as their decisions agree, whatever the batch composition was.
"""
from dataclasses import dataclass, field

import torch

from lmdeploy_focus_dev.testing.step_recorder import summarize_logits


@dataclass
class SeqStep:
    """One forward of one sequence; block tensors are ``[L]`` (``[L, K]`` / ``[L, P]``)."""
    kind: str  # 'prefill' or 'decode'
    block_start: int  # absolute position of the block's first token
    input_ids: torch.Tensor
    input_mask: torch.Tensor
    processed: torch.Tensor  # bool: rows with fresh logits (all True without delayed cache; FOCUS: kept rows)
    topk_values: torch.Tensor  # fp32, descending
    topk_ids: torch.Tensor
    probe_logits: torch.Tensor  # fp32 at the recording's probe ids
    confidence: torch.Tensor  # fp32: softmax prob of the sampled token, as the unmasker saw it
    next_ids: torch.Tensor
    next_mask: torch.Tensor
    step: int  # engine: global step index of the run; reference: index in the sequence
    logits_dtype: str


@dataclass
class RecordedSequence:
    prompt_ids: list[int]  # unpadded prompt
    steps: list[SeqStep] = field(default_factory=list)
    key: int | None = None  # engine: first KV page of the sequence


@dataclass
class Recording:
    sequences: list[RecordedSequence]
    layout: list[tuple[str, tuple[int, ...]]]  # per global step: kind and the sequence index of each row
    orphan_rows: int  # rows of sequences whose prefill was not recorded (ignored)


def strip_padding(prompt_ids: list[int], mask_token_id: int) -> list[int]:
    """The prompt without the mask tokens that pad it to a multiple of the block length."""
    end = len(prompt_ids)
    while end > 0 and prompt_ids[end - 1] == mask_token_id:
        end -= 1
    return list(prompt_ids[:end])


def sequences_from_recording(steps: list[dict], mask_token_id: int) -> Recording:
    """Split batch-level recorded steps into sequences (keyed by first KV page, opened at prefill)."""
    sequences, by_key, layout, orphans = [], {}, [], 0
    for record in steps:
        block_length = record['input_ids'].size(1)
        rows = []
        for b in range(record['batch_size']):
            key = int(record['seq_keys'][b])
            if record['kind'] == 'prefill':  # a page freed by a finished sequence may be reused later
                by_key[key] = len(sequences)
                sequences.append(RecordedSequence(strip_padding(record['prompt_ids'][b], mask_token_id), key=key))
            index = by_key.get(key)
            rows.append(-1 if index is None else index)
            if index is None:
                orphans += 1
                continue
            block_start = int(record['history_lengths'][b])
            if record['kind'] == 'prefill':  # the last block of the padded prompt
                block_start += int(record['seq_length'][b]) - block_length
            processed = record['processed']
            sequences[index].steps.append(
                SeqStep(kind=record['kind'],
                        block_start=block_start,
                        input_ids=record['input_ids'][b],
                        input_mask=record['input_mask'][b],
                        processed=torch.ones(block_length, dtype=torch.bool) if processed is None else processed[b],
                        topk_values=record['topk_values'][b],
                        topk_ids=record['topk_ids'][b],
                        probe_logits=record['probe_logits'][b],
                        confidence=record['confidence'][b],
                        next_ids=record['next_token_ids'][b],
                        next_mask=record['next_mask'][b],
                        step=int(record['step']),
                        logits_dtype=record['logits_dtype']))
        layout.append((record['kind'], tuple(rows)))
    return Recording(sequences=sequences, layout=layout, orphan_rows=orphans)


def _summarize_processed(logits: torch.Tensor, processed: torch.Tensor, probes: torch.Tensor) -> dict:
    """Summaries of the processed rows (greedy candidates); NaN at the others, which have no logits."""
    rows = summarize_logits(logits[processed], logits[processed].argmax(dim=-1), probes)
    dense = {}
    for name, values in rows.items():
        fill = float('nan') if values.is_floating_point() else -1
        dense[name] = values.new_full((processed.numel(), *values.shape[1:]), fill)
        dense[name][processed] = values
    return dense


def sequences_from_reference(results, prompts: list[list[int]], probes: torch.Tensor) -> list[RecordedSequence]:
    """``reference_generate(..., record_steps=True)`` results → sequences (summaries of the full logits)."""
    sequences = []
    for prompt, result in zip(prompts, results):
        sequence = RecordedSequence(list(prompt))
        for k, record in enumerate(result.steps):
            # rows with logits: the processed set, or with FOCUS what survived eviction
            fresh = (record.processed if getattr(record, 'kept', None) is None else record.kept).bool()
            summary = _summarize_processed(record.logits, fresh, probes)
            sequence.steps.append(
                SeqStep(kind=record.kind,
                        block_start=record.history_length,
                        input_ids=record.input_ids,
                        input_mask=record.input_mask,
                        processed=fresh,
                        next_ids=record.next_token_ids,
                        next_mask=record.next_mask,
                        step=k,
                        logits_dtype=str(record.logits.dtype).replace('torch.', ''),
                        **summary))
        sequences.append(sequence)
    return sequences


def pair_by_prompt(a: list[RecordedSequence], b: list[RecordedSequence]):
    """``[(index_a, index_b or None)]`` in ``a``'s order, matching identical prompts."""
    index_b = {tuple(s.prompt_ids): i for i, s in enumerate(b)}
    return [(i, index_b.get(tuple(s.prompt_ids))) for i, s in enumerate(a)]
