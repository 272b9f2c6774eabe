"""Synthetic exact-match tasks whose answers mix easy and hard spans.

A task is a numbered list of sub-questions; the answer repeats each one (easy: copying and fixed
format) and then gives its result, which ranges from trivial (copy, repeat a pattern) to hard
(reverse, sort, key lookup, multi-digit addition with carries):

    user:      1) 4821 + 9377            assistant:  1) 4821 + 9377 = 14198
               2) reverse kqmfjw                     2) reverse kqmfjw = wjfmqk
               3) b in a=173 b=52 x=908              3) b = 52<|im_end|>

Sub-questions are added until the answer (with its eos) is at least ``2 * 32 - 1`` tokens long,
so that wherever the prompt ends, the answer covers at least one whole 32-token block: decoding
always runs a fresh all-mask block, where easy and hard spans sit side by side.

Everything is drawn from a ``random.Random`` seeded by a string, hence identical on every machine
and Python version. A fixed 1/16 of all tasks (by a CRC of the question) is held out: training
never sees them and evaluation draws only from them.
"""
import random
import zlib
from dataclasses import dataclass

MIN_ANSWER_TOKENS = 2 * 32 - 1  # answer + eos: covers a whole 32-block wherever it starts
MAX_SUBTASKS = 6
HELDOUT_MODULUS = 16
LETTERS = 'abcdefghijklmnopqrstuvwxyz'


@dataclass(frozen=True)
class SubTask:
    kind: str
    question: str
    echo: str  # the answer line repeats this before ' = '
    result: str


@dataclass(frozen=True)
class Task:
    subtasks: tuple[SubTask, ...]

    @property
    def question(self) -> str:
        return '\n'.join(f'{i}) {s.question}' for i, s in enumerate(self.subtasks, 1))

    @property
    def answer(self) -> str:
        return '\n'.join(answer_lines(self.subtasks))

    @property
    def kinds(self) -> list[str]:
        return [s.kind for s in self.subtasks]


def answer_lines(subtasks) -> list[str]:
    return [f'{i}) {s.echo} = {s.result}' for i, s in enumerate(subtasks, 1)]


def _word(rng: random.Random, low: int, high: int) -> str:
    return ''.join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _number(rng: random.Random, low_digits: int, high_digits: int) -> int:
    digits = rng.randint(low_digits, high_digits)
    return rng.randrange(10**(digits - 1) if digits > 1 else 0, 10**digits)


def copy_task(rng):
    word = _word(rng, 4, 10)
    return SubTask('copy', f'copy {word}', f'copy {word}', word)


def pattern_task(rng):
    unit = _word(rng, 2, 4)
    shown_len, more = rng.randint(len(unit) + 2, 10), rng.randint(8, 12)
    text = unit * (-(-(shown_len + more) // len(unit)))
    shown = text[:shown_len]
    return SubTask('pattern', f'continue {shown}', f'continue {shown}', text[shown_len:shown_len + more])


def reverse_task(rng):
    word = _word(rng, 4, 10)
    return SubTask('reverse', f'reverse {word}', f'reverse {word}', word[::-1])


def sort_task(rng):
    digits = ''.join(rng.choice('0123456789') for _ in range(rng.randint(5, 10)))
    return SubTask('sort', f'sort {digits}', f'sort {digits}', ''.join(sorted(digits)))


def lookup_task(rng):
    keys = rng.sample(LETTERS, rng.randint(3, 5))
    values = [str(_number(rng, 1, 3)) for _ in keys]
    key = rng.choice(keys)
    pairs = ' '.join(f'{k}={v}' for k, v in zip(keys, values))
    return SubTask('lookup', f'{key} in {pairs}', key, values[keys.index(key)])


def add_task(rng):
    a, b = _number(rng, 2, 5), _number(rng, 2, 5)
    return SubTask('add', f'{a} + {b}', f'{a} + {b}', str(a + b))


# addition twice as often: it is the hard task the model learns slowest
GENERATORS = (copy_task, pattern_task, reverse_task, sort_task, lookup_task, add_task, add_task)
KINDS = ('copy', 'pattern', 'reverse', 'sort', 'lookup', 'add')


def random_task(rng: random.Random) -> Task:
    subtasks = []
    # '\n'-joined lines plus the eos token
    while len(subtasks) < MAX_SUBTASKS and len('\n'.join(answer_lines(subtasks))) + 1 < MIN_ANSWER_TOKENS:
        subtasks.append(rng.choice(GENERATORS)(rng))
    return Task(tuple(subtasks))


def is_heldout(task: Task) -> bool:
    return zlib.crc32(task.question.encode()) % HELDOUT_MODULUS == 0


def sample_tasks(count: int, seed: str, heldout: bool, max_chars: int | None = None) -> list[Task]:
    """``count`` tasks from the training (``heldout=False``) or the held-out side of the split.

    ``max_chars`` bounds ``len(question) + len(answer)`` (rejection keeps sequences within a length).
    """
    rng = random.Random(seed)
    tasks = []
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 100 * (count + 10):  # ~1/16 pass the held-out filter; a length bound can exclude all
            raise ValueError(f'cannot draw {count} tasks with heldout={heldout}, max_chars={max_chars}')
        task = random_task(rng)
        if is_heldout(task) != heldout:
            continue
        if max_chars is not None and len(task.question) + len(task.answer) > max_chars:
            continue
        tasks.append(task)
    return tasks
