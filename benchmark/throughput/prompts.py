"""Conversations -> token-id prompts, and synthetic random prompts.

Selection follows the fork (spec §6): the chat template is applied with thinking off, prompts or
reference replies shorter than 4 tokens are dropped, there is no output-length filter, and the
order is a seeded shuffle so runs with the same --seed see the same prompts.
"""
import random
from dataclasses import dataclass

from .errors import BenchmarkInputError

MIN_TOKENS = 4
# random prompts draw ids from the ordinary vocabulary, away from byte tokens and special tokens; a vocabulary
# too small for that (the tiny byte-level model: 256) is drawn from whole
RANDOM_ID_LOW = 1000


@dataclass
class Prompt:
    input_ids: list
    max_new_tokens: int
    text: str | None = None  # templated text; None for token-id data (nothing to tokenise)


def render_chat(tokenizer, messages) -> str:
    """The model's chat template (thinking off where the template knows it); plain text without one."""
    messages = [dict(m) for m in messages]
    if getattr(tokenizer, 'chat_template', None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False)
        except TypeError:  # templates / tokenizers without the enable_thinking switch
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return '\n\n'.join(m['content'] for m in messages)


def encode(tokenizer, text: str) -> list:
    # the template already holds the special tokens
    return list(tokenizer.encode(text, add_special_tokens=False))


def sample_prompts(conversations, tokenizer, num_prompts: int, max_new_tokens: int, seed: int) -> list[Prompt]:
    """Seeded shuffle, then template + tokenise until ``num_prompts`` pass the length filter."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    prompts = []
    for i in order:
        conv = conversations[i]
        text = render_chat(tokenizer, conv.messages)
        ids = encode(tokenizer, text)
        if len(ids) < MIN_TOKENS or len(encode(tokenizer, conv.reference)) < MIN_TOKENS:
            continue
        prompts.append(Prompt(ids, max_new_tokens, text))
        if len(prompts) == num_prompts:
            break
    if not prompts:
        raise BenchmarkInputError(f'no prompt passes the filter (prompt and reply need >= {MIN_TOKENS} tokens)')
    return prompts


def random_prompts(num_prompts: int, input_len: int, output_len: int, vocab_high: int, seed: int) -> list[Prompt]:
    """``num_prompts`` prompts of ``input_len`` uniform random token ids below ``vocab_high`` (the tokenizer's
    ordinary vocabulary; no chat template)."""
    if input_len < 1 or output_len < 1:
        raise BenchmarkInputError('--input-len and --output-len must be >= 1 for the random dataset')
    if vocab_high < 1:
        raise BenchmarkInputError(f'the tokenizer reports a vocabulary of {vocab_high} ids; no random prompt fits')
    low = RANDOM_ID_LOW if vocab_high >= 2 * RANDOM_ID_LOW else 0
    rng = random.Random(seed)
    return [Prompt([rng.randrange(low, vocab_high) for _ in range(input_len)], output_len)
            for _ in range(num_prompts)]
