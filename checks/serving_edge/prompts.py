"""Prompt sets of the serving edge-case check, for the tiny trained SDAR model (byte tokenizer).

Two kinds, as the model was trained on (models/tiny-sdar-5m-b32/README.md): held-out tasks in the
chat template (confident, many tokens per step, answers of 63+ tokens ending in ``<|im_end|>``)
and King James Bible text continued without a template (unsure, about one token per step, so a
block spends many steps mid-block). Prompt lengths vary, so prompts end at different positions of
their last block.

``Encoder``: ``chat(content) -> ids`` (template applied) and ``text(text) -> ids`` (as is).
"""
import json
import re
from dataclasses import dataclass

# public-domain King James Version passages (the tiny model's text half)
KJV = (
    'In the beginning God created the heaven and the earth. And the earth was without form, and void; and '
    'darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God '
    'said, Let there be light: and there was light.',
    'The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me '
    'beside the still waters. He restoreth my soul: he leadeth me in the paths of righteousness for his '
    "name's sake.",
    'In the beginning was the Word, and the Word was with God, and the Word was God. The same was in the '
    'beginning with God. All things were made by him; and without him was not any thing made that was made.',
    'Vanity of vanities, saith the Preacher, vanity of vanities; all is vanity. What profit hath a man of all '
    'his labour which he taketh under the sun? One generation passeth away, and another generation cometh: '
    'but the earth abideth for ever.',
    'To every thing there is a season, and a time to every purpose under the heaven: A time to be born, and a '
    'time to die; a time to plant, and a time to pluck up that which is planted;',
    'Blessed are the poor in spirit: for theirs is the kingdom of heaven. Blessed are they that mourn: for they '
    'shall be comforted. Blessed are the meek: for they shall inherit the earth.',
    'Now faith is the substance of things hoped for, the evidence of things not seen. For by it the elders '
    'obtained a good report.',
    'And the father of circumcision to them who are not of the circumcision only, but who also walk in the '
    'steps of that faith of our father Abraham, which he had being yet uncircumcised.',
)
TEXT_CUTS = (48, 71, 93, 117, 60, 84)  # characters kept of a passage (then back to a word end)
NUMBERED = re.compile(r'^\s*\d+\)\s*')


@dataclass(frozen=True)
class PromptSpec:
    label: str  # 'task3', 'text1', 'long_task0', 'prefix_text2', ...
    kind: str  # 'task' | 'text'
    ids: tuple


class Encoder:
    """Token ids from a Hugging Face tokenizer: the chat template (thinking off where known) for tasks,
    plain encoding for text, no special tokens added."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def chat(self, content: str) -> list:
        messages = [{'role': 'user', 'content': content}]
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=False)
        except TypeError:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.text(text)

    def text(self, text: str) -> list:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def load_task_prompts(path: str) -> list[str]:
    """The ``prompt`` field of each line of a task JSONL file."""
    prompts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line)['prompt'])
    return prompts


def cut_at_word(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at the end of a word (kept whole if shorter)."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(' ')
    return cut[:space] if space > 0 else cut


def sub_questions(task_prompt: str) -> list[str]:
    """The lines of a numbered task prompt without their numbers."""
    return [NUMBERED.sub('', line) for line in task_prompt.splitlines() if line.strip()]


def numbered(lines: list[str]) -> str:
    return '\n'.join(f'{i + 1}) {line}' for i, line in enumerate(lines))


def main_prompts(tasks: list[str], encoder, num_tasks: int = 12, num_text: int = 4) -> list[PromptSpec]:
    """``num_tasks`` held-out tasks and ``num_text`` KJV openings; the text prompts are spread evenly
    (16 prompts: at 0, 5, 10, 15), so each group of the staggered case (``index % 4``) holds both kinds."""
    if len(tasks) < num_tasks:
        raise ValueError(f'need {num_tasks} tasks, the task file has {len(tasks)}')
    task_specs = [PromptSpec(f'task{i}', 'task', tuple(encoder.chat(t))) for i, t in enumerate(tasks[:num_tasks])]
    text_specs = [PromptSpec(f'text{i}', 'text',
                             tuple(encoder.text(cut_at_word(KJV[i % len(KJV)], TEXT_CUTS[i % len(TEXT_CUTS)]))))
                  for i in range(num_text)]
    total = num_tasks + num_text
    text_at = set(range(num_text))  # 0 or 1 text prompt: first
    if num_text > 1:
        text_at = {round(k * (total - 1) / (num_text - 1)) for k in range(num_text)}
    tasks_left, texts_left = iter(task_specs), iter(text_specs)
    return [next(texts_left) if i in text_at else next(tasks_left) for i in range(total)]


def text_of_at_least(encoder, min_tokens: int, start: int = 0) -> str:
    """KJV passages from ``start`` on, joined, cut after the first word that reaches ``min_tokens``."""
    words, j = [], start
    while True:
        for word in KJV[j % len(KJV)].split():
            words.append(word)
            if len(encoder.text(' '.join(words))) >= min_tokens:
                return ' '.join(words)
        j += 1


def lines_of_at_least(tasks: list[str], encoder, min_tokens: int, start: int = 0) -> list[str]:
    """Sub-questions of the tasks from ``start`` on, until the chat prompt of them reaches ``min_tokens``."""
    lines, j = [], start
    while True:
        for line in sub_questions(tasks[j % len(tasks)]):
            lines.append(line)
            if len(encoder.chat(numbered(lines))) >= min_tokens:
                return lines
        j += 1


def long_prompts(tasks: list[str], encoder, min_tokens: int, count: int = 8) -> list[PromptSpec]:
    """``count`` prompts of at least ``min_tokens`` tokens (half task, half text), each a little longer
    than the previous one so they end at different block positions. Tasks: the sub-questions of
    consecutive held-out tasks, renumbered, in one chat turn; text: KJV passages joined."""
    specs = []
    for i in range(count):
        target = min_tokens + 7 * i
        if i % 2 == 0:
            ids = encoder.chat(numbered(lines_of_at_least(tasks, encoder, target, start=3 * i)))
            specs.append(PromptSpec(f'long_task{i // 2}', 'task', tuple(ids)))
        else:
            ids = encoder.text(text_of_at_least(encoder, target, start=i))
            specs.append(PromptSpec(f'long_text{i // 2}', 'text', tuple(ids)))
    return specs


def prefix_prompts(tasks: list[str], encoder, min_shared_tokens: int, count: int = 8) -> list[PromptSpec]:
    """``count`` prompts (half task, half text); prompts of one kind share a prefix of at least
    ``min_shared_tokens`` tokens and differ after it. Tasks: the same first sub-questions, then two
    different ones; text: the same KJV words, then a different passage's opening."""
    # the chat template's closing tokens follow the shared lines, so ask for a little more
    shared_lines = lines_of_at_least(tasks, encoder, min_shared_tokens + 16, start=40)
    shared_text = text_of_at_least(encoder, min_shared_tokens, start=2)
    specs = []
    for i in range(count):
        if i % 2 == 0:
            tail = sub_questions(tasks[(60 + i) % len(tasks)])[:2]
            ids = encoder.chat(numbered(shared_lines + tail))
            specs.append(PromptSpec(f'prefix_task{i // 2}', 'task', tuple(ids)))
        else:
            tail = cut_at_word(KJV[i % len(KJV)], TEXT_CUTS[i % len(TEXT_CUTS)])
            specs.append(PromptSpec(f'prefix_text{i // 2}', 'text', tuple(encoder.text(shared_text + ' ' + tail))))
    return specs


def common_prefix_len(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
