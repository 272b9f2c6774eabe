"""Streaming text of block-sized chunks: only an unfinished character waits (patch 20, serving/detokenize.py).
Found by a bug hunt (2026-12-07): a diffusion model's chunk is a block, and upstream held a chunk ending inside a
multi-byte character back whole, dropping it when the request ended there (max_tokens cut inside a character)."""
import os
import random

import pytest

from lmdeploy.tokenizer import DetokenizeState, Tokenizer

TINY = os.path.join(os.path.dirname(__file__), '..', 'models', 'tiny-sdar-5m-b32')  # byte-level: ids 0-255 = bytes
ALPHABET = 'abc xyz.,' + 'éßü' + '中文字' + '😀🚀'  # 1-, 2-, 3- and 4-byte characters


@pytest.fixture(scope='module')
def tokenizer():
    return Tokenizer(TINY)


def _stream(tokenizer, ids, chunk_sizes, prompt=()):
    """What a streaming client gets: one detokenize call per engine chunk, texts joined; with a prompt the state
    starts after it, as the server's (``DetokenizeState(len(prompt))``)."""
    prompt = list(prompt)
    state, end, texts = DetokenizeState(len(prompt)), 0, []
    for size in chunk_sizes:
        end = min(len(ids), end + size)
        text, state = tokenizer.detokenize_incrementally(prompt + ids[:end], state)
        texts.append(text)
        if end == len(ids):
            break
    return texts


def _whole_characters(text: str, cut: int) -> str:
    """The text of the first ``cut`` bytes, up to the last whole character."""
    return text.encode()[:cut].decode(errors='ignore')


@pytest.mark.parametrize('block', [16, 32, 64])
def test_a_block_cut_inside_a_character_loses_only_that_character(tokenizer, block):
    rng = random.Random(random.randrange(2**31))
    for _ in range(20):
        text = ''.join(rng.choice(ALPHABET) for _ in range(rng.randint(10, 60)))
        ids = list(text.encode())
        cut = rng.randint(1, len(ids))  # max_tokens: anywhere, inside a character too
        sizes = [block] * (cut // block + 1)
        prompt = list(''.join(rng.choice(ALPHABET) for _ in range(rng.choice([0, 5, 40]))).encode())
        got = ''.join(_stream(tokenizer, ids[:cut], sizes, prompt))
        assert got == _whole_characters(text, cut), (text, cut, block, prompt)


def test_each_chunk_sends_its_whole_characters_at_once(tokenizer):
    """After every chunk the client holds every whole character received so far (upstream: nothing of a chunk that
    ends inside a character until the next chunk); the next chunk starts with the completed character."""
    rng = random.Random(random.randrange(2**31))
    for _ in range(20):
        text = ''.join(rng.choice(ALPHABET) for _ in range(40))
        ids = list(text.encode())
        sizes = [rng.randint(2, 24) for _ in range(len(ids))]
        texts, received = _stream(tokenizer, ids, sizes), 0
        for i, size in enumerate(sizes[:len(texts)]):
            received = min(len(ids), received + size)
            assert ''.join(texts[:i + 1]) == _whole_characters(text, received), (text, sizes[:i + 1])
        assert ''.join(texts) == text


def test_one_token_chunks_are_upstreams(tokenizer):
    from lmdeploy.tokenizer import HuggingFaceTokenizer
    upstream = HuggingFaceTokenizer.detokenize_incrementally.__lmdeploy_focus_upstream__
    rng = random.Random(random.randrange(2**31))
    text = ''.join(rng.choice(ALPHABET) for _ in range(50))
    ids = list(text.encode())
    ours, theirs = DetokenizeState(), DetokenizeState()
    for end in range(1, len(ids) + 1):
        a, ours = tokenizer.detokenize_incrementally(ids[:end], ours)
        b, theirs = upstream(tokenizer.model, ids[:end], theirs)
        assert a == b and ours.as_tuple() == theirs.as_tuple()
