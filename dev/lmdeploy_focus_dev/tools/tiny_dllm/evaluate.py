"""Quality and decoding dynamics of an exported checkpoint, through the reference decode loop.

Everything runs :func:`lmdeploy_focus_dev.reference.dllm_decode.reference_generate` (greedy,
``low_confidence_dynamic`` unmasking, stock decoding without delayed cache) on the checkpoint as
written to disk (bf16 weights computed in fp32), i.e. the decoding the engine does:

* tasks: exact match of the whole answer on a fixed held-out sample (the same sample for every
  model and seed), line accuracy per sub-task kind, and for each answer token how many tokens
  were decoded in the forward that decoded it ("co-decoded"), split into format/echo spans,
  result spans and the eos fill: easy spans should come several per forward, hard ones one or two;
* text: tokens decoded per forward when continuing held-out KJV passages.

Generation yields per-prompt *records* (:func:`task_records`, :func:`text_records`), which
:func:`summarize_tasks` / :func:`summarize_text` aggregate; ``eval_runner`` spreads the record
work over processes. The reference loop is a host-side oracle (its paged cache lives on the CPU).
"""
import random
from collections import Counter

import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy

from lmdeploy_focus_dev.reference.checkpoint import SDARCheckpoint, load_sdar_checkpoint
from lmdeploy_focus_dev.reference.dllm_decode import GenerationResult, reference_generate

from .data import CHAT_OVERHEAD, SEQ_LEN, TextCorpus
from .tasks import KINDS, Task, sample_tasks
from .tokenizer import EOS_ID, NUM_BYTES, PAD_ID, chat_prompt_ids, decode, encode

MASKED, UNMASKED = consts.DLLM_MASKED, consts.DLLM_UNMASKED
THRESHOLDS = (0.9, 0.8, 0.7)
HELDOUT_TASK_SEED = 'heldout-eval'  # fixed: every model is scored on the same tasks
TASK_MAX_NEW_TOKENS = 128  # the longest answer plus its eos fits
TEXT_MAX_NEW_TOKENS = 64
STOP_TOKEN_IDS = (EOS_ID, PAD_ID)
SPAN_CLASSES = ('format', 'result', 'eos')


def dynamic_unmasking(threshold: float) -> DLLMConfig:
    return DLLMConfig(unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC, confidence_threshold=threshold)


def heldout_tasks(count: int) -> list[Task]:
    return sample_tasks(count, HELDOUT_TASK_SEED, heldout=True, max_chars=SEQ_LEN - CHAT_OVERHEAD)


def answer_text(token_ids: list[int]) -> str:
    """Generated text up to the first special token."""
    end = next((i for i, t in enumerate(token_ids) if t >= NUM_BYTES), len(token_ids))
    return decode(token_ids[:end])


def decoded_per_forward(result: GenerationResult) -> list[int]:
    """Tokens unmasked by each forward that had masked input (prefill included, commits excluded)."""
    counts = []
    for step in result.steps:
        was_masked = step.input_mask == MASKED
        if bool(was_masked.any()):
            counts.append(int((was_masked & (step.next_mask == UNMASKED)).sum()))
    return counts


def co_decoded(result: GenerationResult) -> dict[int, int]:
    """Absolute position -> number of tokens the forward that decoded it decoded in all."""
    events = {}
    for step in result.steps:
        newly = (step.input_mask == MASKED) & (step.next_mask == UNMASKED)
        n = int(newly.sum())
        for p in torch.nonzero(newly).flatten().tolist():
            events[step.history_length + p] = n
    return events


def span_classes(task: Task) -> list[str]:
    """Per answer token (answer bytes, then eos): 'format' (numbering, echo, ' = '), 'result' or 'eos'."""
    classes = []
    for i, sub in enumerate(task.subtasks, 1):
        classes += ['format'] * len(encode(f'{i}) {sub.echo} = ')) + ['result'] * len(encode(sub.result))
        if i < len(task.subtasks):
            classes.append('format')  # the newline
    return classes + ['eos']


def _generate(ckpt: SDARCheckpoint, prompts: list[list[int]], threshold: float, max_new_tokens: int,
              block_length: int) -> list[GenerationResult]:
    return reference_generate(ckpt.model, prompts, block_length, ckpt.mask_token_id, dynamic_unmasking(threshold),
                              max_new_tokens, stop_token_ids=list(STOP_TOKEN_IDS), record_steps=True)


# ---- records (per prompt, picklable) ------------------------------------------------------------


def task_records(ckpt: SDARCheckpoint, tasks: list[Task], threshold: float, block_length: int = 32) -> list[dict]:
    prompts = [chat_prompt_ids(t.question) for t in tasks]
    records = []
    for task, prompt, result in zip(tasks, prompts, _generate(ckpt, prompts, threshold, TASK_MAX_NEW_TOKENS,
                                                              block_length)):
        events = co_decoded(result)
        spans = [(cls, events[len(prompt) + i]) for i, cls in enumerate(span_classes(task))
                 if len(prompt) + i in events]
        records.append({'output': answer_text(result.token_ids), 'per_forward': decoded_per_forward(result),
                        'spans': spans})
    return records


def text_records(ckpt: SDARCheckpoint, prompts: list[list[int]], threshold: float,
                 block_length: int = 32) -> list[dict]:
    results = _generate(ckpt, prompts, threshold, TEXT_MAX_NEW_TOKENS, block_length)
    return [{'output': answer_text(r.token_ids), 'per_forward': decoded_per_forward(r)} for r in results]


# ---- summaries ----------------------------------------------------------------------------------


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def summarize_tasks(tasks: list[Task], records: list[dict], threshold: float) -> dict:
    correct = [r['output'] == t.answer for t, r in zip(tasks, records)]
    lines = {k: [] for k in KINDS}
    samples = []
    for task, record, ok in zip(tasks, records, correct):
        got = record['output'].split('\n')
        for i, (sub, want) in enumerate(zip(task.subtasks, task.answer.split('\n'))):
            lines[sub.kind].append(i < len(got) and got[i] == want)
        if len(samples) < 4 and (not ok or len(samples) < 2):
            samples.append({'question': task.question, 'expected': task.answer, 'output': record['output']})
    per_forward = [n for r in records for n in r['per_forward']]
    spans = {cls: [n for r in records for c, n in r['spans'] if c == cls] for cls in SPAN_CLASSES}
    return {
        'threshold': threshold,
        'tasks': len(records),
        'exact_match': _mean(correct),
        'line_accuracy_by_kind': {k: _mean(v) for k, v in lines.items() if v},
        'tokens_per_forward': _mean(per_forward),
        'forwards_per_task': _mean(len(r['per_forward']) for r in records),
        'co_decoded_by_span': {k: _mean(v) for k, v in spans.items() if v},
        'decoded_per_forward_histogram': dict(sorted(Counter(per_forward).items())),
        'correct': [int(c) for c in correct],
        'samples': samples,
    }


def summarize_text(prompts: list[list[int]], records: list[dict], threshold: float) -> dict:
    per_forward = [n for r in records for n in r['per_forward']]
    return {
        'threshold': threshold,
        'prompts': len(records),
        'tokens_per_forward': _mean(per_forward),
        'decoded_per_forward_histogram': dict(sorted(Counter(per_forward).items())),
        'sample': {'prompt': decode(prompts[0]), 'continuation': records[0]['output']} if records else None,
    }


def text_prompts(corpus: TextCorpus, count: int, seed: int = 0) -> list[list[int]]:
    """Held-out passages cut at a line start, 33..80 bytes long (decoding starts anywhere in a block)."""
    rng = random.Random(f'text-eval/{seed}')
    data = corpus.bytes
    starts = [int(s) for s in corpus.line_starts if s + 80 <= len(data)]
    picks = rng.sample(starts, min(count, len(starts)))
    return [data[s:s + rng.randint(33, 80)].tolist() for s in picks]


def evaluate_tasks(ckpt: SDARCheckpoint, tasks: list[Task], threshold: float, block_length: int = 32) -> dict:
    return summarize_tasks(tasks, task_records(ckpt, tasks, threshold, block_length), threshold)


def task_accuracy(model_dir, num_tasks: int, threshold: float = 0.9, block_length: int = 32) -> float:
    """Exact match of ``model_dir`` on the first ``num_tasks`` held-out tasks (the eval's sample)."""
    ckpt = load_sdar_checkpoint(model_dir, dtype=torch.float32)
    return evaluate_tasks(ckpt, heldout_tasks(num_tasks), threshold, block_length)['exact_match']
