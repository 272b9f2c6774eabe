"""Dataset readers: every format becomes a list of :class:`Conversation`.

A conversation keeps what the fork's prompt rule needs (spec §6): the system turns before the first
user turn, that user turn, and the assistant reply that follows it (used only to drop near-empty
samples; output length is never taken from it).
"""
import json
import os
import re
from dataclasses import dataclass

from .errors import BenchmarkInputError

FORMATS = ('auto', 'sharegpt', 'gsm8k', 'math')
RANDOM_DATASET = 'random'

# speaker names seen in ShareGPT-style dumps -> chat-template roles
_ROLE_NAMES = {
    'human': 'user', 'user': 'user',
    'gpt': 'assistant', 'assistant': 'assistant', 'chatgpt': 'assistant', 'bard': 'assistant', 'bing': 'assistant',
    'system': 'system',
}

# HF ids the fork benchmarks with: (config name, split, format, data_files)
KNOWN_HF_DATASETS = {
    'anon8231489123/ShareGPT_Vicuna_unfiltered': (None, 'train', 'sharegpt', 'ShareGPT_V3_unfiltered_cleaned_split.json'),
    'allenai/WildChat': (None, 'train', 'sharegpt', None),
    'nlile/hendrycks-MATH-benchmark': (None, 'test', 'math', None),
    'openai/gsm8k': ('main', 'test', 'gsm8k', None),
}
_HF_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')


@dataclass(frozen=True)
class Conversation:
    messages: tuple  # ({'role': ..., 'content': ...}, ...): system turns + the first user turn
    reference: str   # the assistant reply to that user turn


def _turns_of(record: dict):
    for key in ('conversations', 'conversation', 'messages'):
        turns = record.get(key)
        if isinstance(turns, list):
            return turns
    return None


def _normalise_turn(turn) -> dict | None:
    if not isinstance(turn, dict):
        return None
    role = _ROLE_NAMES.get(str(turn.get('from', turn.get('role', ''))).lower())
    content = turn.get('value', turn.get('content'))
    if role is None or not isinstance(content, str):
        return None
    return {'role': role, 'content': content}


def conversation_from_chat(turns: list) -> Conversation | None:
    """System turns + first user turn, answered by a non-empty assistant turn; None otherwise."""
    prefix = []
    for i, raw in enumerate(turns):
        turn = _normalise_turn(raw)
        if turn is None:
            return None
        if turn['role'] == 'system':
            prefix.append(turn)
            continue
        if turn['role'] != 'user' or i + 1 >= len(turns):
            return None
        reply = _normalise_turn(turns[i + 1])
        if reply is None or reply['role'] != 'assistant' or not reply['content'].strip():
            return None
        return Conversation(tuple(prefix + [turn]), reply['content'])
    return None


def _qa(question: str, answer: str) -> Conversation | None:
    if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
        return None
    return Conversation(({'role': 'user', 'content': question}, ), answer)


def detect_format(record: dict) -> str:
    if _turns_of(record) is not None:
        return 'sharegpt'
    if 'question' in record and 'answer' in record:
        return 'gsm8k'
    if 'problem' in record and 'solution' in record:
        return 'math'
    raise BenchmarkInputError(f'cannot tell the dataset format from the record keys {sorted(record)[:8]}; '
                              f'expected ShareGPT (conversations), gsm8k (question/answer) or math (problem/solution)')


def conversations_from_records(records: list, fmt: str, source: str) -> list[Conversation]:
    if not records:
        raise BenchmarkInputError(f'{source}: no records')
    if not all(isinstance(r, dict) for r in records[:100]):
        raise BenchmarkInputError(f'{source}: records must be JSON objects')
    if fmt == 'auto':
        fmt = detect_format(records[0])
    convert = {
        'sharegpt': lambda r: conversation_from_chat(_turns_of(r) or []),
        'gsm8k': lambda r: _qa(r.get('question'), r.get('answer')),
        'math': lambda r: _qa(r.get('problem'), r.get('solution')),
    }[fmt]
    conversations = [c for c in map(convert, records) if c is not None]
    if not conversations:
        raise BenchmarkInputError(f'{source}: no usable {fmt} records (check --dataset-format)')
    return conversations


def read_json_records(path: str) -> list:
    """A JSON list (or {"data": [...]}) or JSON lines."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkInputError(f'cannot read dataset {path}: {e}') from None
    try:
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get('data'), list):
            data = data['data']
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            return [data]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BenchmarkInputError(f'{path}: neither JSON nor JSON lines (line {n}: {e.msg})') from None
    return records


def load_hf_records(dataset_id: str, subset: str | None, split: str | None) -> tuple[list, str]:
    """Records of a HuggingFace dataset and their format hint; clear errors without datasets/network."""
    known = KNOWN_HF_DATASETS.get(dataset_id, (None, 'train', 'auto', None))
    subset, split = subset or known[0], split or known[1]
    try:
        import datasets
    except ImportError:
        raise BenchmarkInputError(f'{dataset_id!r} is not a local file; HuggingFace dataset ids need the `datasets` '
                                  'package (pip install datasets) and network access') from None
    try:
        kwargs = {'data_files': known[3]} if known[3] else {}
        ds = datasets.load_dataset(dataset_id, subset, split=split, **kwargs)
    except Exception as e:  # noqa: BLE001  network, auth, missing split: all one-line user errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BenchmarkInputError(f'cannot load HuggingFace dataset {dataset_id!r} (split {split!r}): {first}') from None
    return [dict(r) for r in ds], known[2]


def load_conversations(dataset: str, fmt: str = 'auto', hf_subset: str = None, hf_split: str = None):
    """Conversations of a local JSON/JSONL file or a HuggingFace dataset id."""
    if fmt not in FORMATS:
        raise BenchmarkInputError(f'unknown --dataset-format {fmt!r}; choose one of {", ".join(FORMATS)}')
    if os.path.isdir(dataset):
        raise BenchmarkInputError(f'dataset {dataset} is a directory; give a JSON/JSONL file')
    if os.path.exists(dataset):
        return conversations_from_records(read_json_records(dataset), fmt, dataset)
    if dataset.endswith(('.json', '.jsonl')) or dataset.startswith(('.', '/', '~')) or not _HF_ID.match(dataset):
        raise BenchmarkInputError(f'dataset file not found: {dataset} (give a JSON/JSONL file, "random" or a '
                                  'HuggingFace dataset id)')
    records, hint = load_hf_records(dataset, hf_subset, hf_split)
    return conversations_from_records(records, fmt if fmt != 'auto' else hint, dataset)
