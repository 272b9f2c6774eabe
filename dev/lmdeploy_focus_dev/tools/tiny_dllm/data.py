"""Training sequences in the layout the engine decodes, and the text corpus.

Every sequence starts at position 0 and holds one example, as a served request does (no packing):

* task: ChatML prompt, answer, ``<|im_end|>``; the rest of the eos's block is filled with
  ``<|im_end|>`` too (the engine decodes whole blocks and cuts after the first stop token, so the
  model learns to finish a block with eos), later blocks with pad. Trained positions: the answer
  and that fill. The prompt is never noised, so the block where the prompt ends holds clean
  prompt tokens followed by noised answer tokens: exactly the engine's prompt padded with mask
  tokens up to a multiple of ``L`` (``reference.dllm_decode._pad_prompt``).
* text: a window of KJV verses (one per line) starting at a verse start; every position trained.

Randomness: tasks from ``random.Random(f'{seed}/tasks/{step}')``, text windows from a CPU
``torch.Generator`` seeded by ``(seed, step)``, so batch ``step`` is the same on any device and does
not depend on earlier steps.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tasks import Task, sample_tasks
from .tokenizer import EOS_ID, PAD_ID, chat_prompt_ids, encode

SEQ_LEN = 224  # 7 blocks of 32: holds 99% of tasks (longer ones are redrawn) and a text window
TRAIN_FILE = 'kjv_train.txt'
HELDOUT_FILE = 'kjv_heldout.txt'
CHAT_OVERHEAD = len(chat_prompt_ids('')) + 1  # ChatML framing plus the answer's eos


@dataclass
class Batch:
    ids: torch.Tensor  # long [B, N] clean tokens
    trained: torch.Tensor  # bool [B, N] positions that may be noised and carry loss
    is_task: torch.Tensor  # bool [B]


def task_sequence(task: Task, seq_len: int, block_length: int) -> tuple[list[int], list[bool]]:
    """Token ids and trained-position flags of one task, ``seq_len`` long."""
    prompt = chat_prompt_ids(task.question)
    answer = encode(task.answer) + [EOS_ID]
    end = len(prompt) + len(answer)
    block_end = -(-end // block_length) * block_length
    if block_end > seq_len:
        raise ValueError(f'task needs {block_end} positions, sequence has {seq_len}')
    ids = prompt + answer + [EOS_ID] * (block_end - end) + [PAD_ID] * (seq_len - block_end)
    trained = [False] * len(prompt) + [True] * (block_end - len(prompt)) + [False] * (seq_len - block_end)
    return ids, trained


class TextCorpus:
    """One verse per line; windows start at line starts."""

    def __init__(self, text: str):
        self.bytes = np.frombuffer(text.encode('utf-8'), dtype=np.uint8)
        newlines = np.flatnonzero(self.bytes == ord('\n'))
        self.line_starts = np.concatenate([[0], newlines + 1])

    @classmethod
    def from_file(cls, path: str | Path) -> 'TextCorpus':
        return cls(Path(path).read_text(encoding='utf-8'))

    def windows(self, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """``[count, length]`` byte ids, each window starting at a random line start."""
        starts = self.line_starts[self.line_starts + length <= len(self.bytes)]
        if len(starts) == 0:
            raise ValueError(f'corpus shorter than one {length}-byte window')
        picks = starts[torch.randint(len(starts), (count, ), generator=generator).numpy()]
        return torch.from_numpy(self.bytes[picks[:, None] + np.arange(length)[None, :]].astype(np.int64))

    def lines(self) -> list[str]:
        return self.bytes.tobytes().decode('utf-8').splitlines()


class TrainingData:
    """Deterministic batch ``step`` of mixed task and text sequences."""

    def __init__(self, corpus: TextCorpus, seed: int, seq_len: int, block_length: int, task_fraction: float = 0.5):
        assert seq_len % block_length == 0, 'sequence length must be a multiple of the block length'
        self.corpus, self.seed = corpus, seed
        self.seq_len, self.block_length, self.task_fraction = seq_len, block_length, task_fraction

    def batch(self, step: int, batch_size: int) -> Batch:
        num_tasks = round(batch_size * self.task_fraction)
        tasks = sample_tasks(num_tasks, f'{self.seed}/tasks/{step}', heldout=False,
                             max_chars=self.seq_len - CHAT_OVERHEAD)
        rows = [task_sequence(task, self.seq_len, self.block_length) for task in tasks]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        text = self.corpus.windows(batch_size - num_tasks, self.seq_len, generator)
        ids = torch.cat([torch.tensor([r[0] for r in rows], dtype=torch.long).view(-1, self.seq_len), text])
        trained = torch.cat([torch.tensor([r[1] for r in rows], dtype=torch.bool).view(-1, self.seq_len),
                             torch.ones_like(text, dtype=torch.bool)])
        is_task = torch.arange(batch_size) < num_tasks
        return Batch(ids, trained, is_task)


def load_corpora(data_dir: str | Path) -> tuple[TextCorpus, TextCorpus]:
    """(training, held-out) text written by ``prepare_kjv``."""
    data_dir = Path(data_dir)
    missing = [name for name in (TRAIN_FILE, HELDOUT_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f'{data_dir} lacks {missing}: run python -m lmdeploy_focus_dev.tools.tiny_dllm.prepare_kjv')
    return TextCorpus.from_file(data_dir / TRAIN_FILE), TextCorpus.from_file(data_dir / HELDOUT_FILE)
