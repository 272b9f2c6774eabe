"""The task file: JSON lines, one task each; input data, never code.

Shared by ``python -m lmdeploy_focus.calibrate`` and ``benchmark/eval_quality.py`` (whose
``quality.task_file`` re-raises :class:`TaskFileError` as its input error).

    {"prompt": "What is 6 * 7? Answer with the number only.", "answer": "42", "scorer": "numeric"}
    {"prompt": "Continue: The quick brown fox", "reference": " jumps over the lazy dog.", "max_new_tokens": 32}

``prompt`` (non-empty string) and exactly one of ``answer`` (the expected output; default scorer
``exact_strip``) or ``reference`` (a known continuation; default scorer ``prefix_chars:64``).
Optional: ``scorer`` (see :mod:`quality.scorers`), ``max_new_tokens`` (int >= 1; ``--max-new-tokens``, when
given, caps it), ``id`` (string or int, shown in the JSON) and ``meta`` (anything, carried
along). Other keys are rejected so that a misspelt field fails instead of being ignored. Blank
lines are skipped. Every problem is one line: ``FILE:LINE: what is wrong``.
"""
import json
from dataclasses import dataclass

from .scorers import DEFAULT_ANSWER_SCORER, DEFAULT_REFERENCE_SCORER, ScorerError, check_target, get_scorer

KNOWN_KEYS = ('prompt', 'answer', 'reference', 'scorer', 'max_new_tokens', 'id', 'meta')


class TaskFileError(ValueError):
    """A task file that cannot be read, or a line that is not a valid task."""


@dataclass(frozen=True)
class Task:
    line: int  # 1-based line in the task file
    prompt: str
    target: str
    kind: str  # 'answer' | 'reference'
    scorer: str
    max_new_tokens: int | None = None
    id: str | int | None = None
    meta: object = None

    def score(self, output: str) -> float:
        return get_scorer(self.scorer)(output, self.target)


def parse_task(record, path: str, line: int) -> Task:
    """One decoded JSON line -> Task (errors name ``path:line``)."""

    def fail(message):
        raise TaskFileError(f'{path}:{line}: {message}')

    if not isinstance(record, dict):
        fail(f'expected a JSON object, got {type(record).__name__}')
    unknown = sorted(set(record) - set(KNOWN_KEYS))
    if unknown:
        fail(f'unknown key(s) {unknown}; known: {", ".join(KNOWN_KEYS)}')
    prompt = record.get('prompt')
    if not isinstance(prompt, str) or not prompt.strip():
        fail('"prompt" must be a non-empty string')
    kinds = [k for k in ('answer', 'reference') if k in record]
    if len(kinds) != 1:
        fail('give exactly one of "answer" or "reference"')
    kind = kinds[0]
    target = record[kind]
    if not isinstance(target, str):
        fail(f'"{kind}" must be a string, got {type(target).__name__}')
    scorer = record.get('scorer', DEFAULT_ANSWER_SCORER if kind == 'answer' else DEFAULT_REFERENCE_SCORER)
    try:
        get_scorer(scorer)
        check_target(scorer, target)
    except ScorerError as e:
        fail(str(e))
    max_new = record.get('max_new_tokens')
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
        fail(f'"max_new_tokens" must be an integer >= 1, got {max_new!r}')
    task_id = record.get('id')
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, (str, int))):
        fail(f'"id" must be a string or an integer, got {task_id!r}')
    return Task(line=line, prompt=prompt, target=target, kind=kind, scorer=scorer, max_new_tokens=max_new, id=task_id,
                meta=record.get('meta'))


def load_tasks(path: str) -> list[Task]:
    """All tasks of a JSONL file, in file order."""
    try:
        with open(path, encoding='utf-8') as f:
            # '\n' only: str.splitlines also splits at U+2028 / U+2029 / U+0085, which JSON strings may hold raw
            lines = [line.removesuffix('\r') for line in f.read().split('\n')]
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f'cannot read task file {path}: {e}') from None
    tasks = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskFileError(f'{path}:{number}: not valid JSON ({e.msg} at column {e.colno})') from None
        except (ValueError, RecursionError) as e:  # e.g. an integer of over 4300 digits, nesting past the stack
            raise TaskFileError(f'{path}:{number}: not a usable JSON line ({type(e).__name__}: {e})') from None
        try:  # a lone surrogate escape ("\ud800") is valid JSON but no text: the reports could not be written
            json.dumps(record, ensure_ascii=False).encode('utf-8')
        except UnicodeEncodeError:
            raise TaskFileError(f'{path}:{number}: holds a lone surrogate escape (\\ud800-\\udfff), which is no '
                                f'text') from None
        tasks.append(parse_task(record, path, number))
    if not tasks:
        raise TaskFileError(f'{path}: no tasks (expected JSON lines with "prompt" and "answer" or "reference")')
    return tasks
