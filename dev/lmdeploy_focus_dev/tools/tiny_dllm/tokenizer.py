"""Byte-level tokenizer of the tiny SDAR model.

Ids 0..255 are the UTF-8 bytes themselves, so any text encodes and training needs no tokenizer
library on its hot path (``encode`` is ``text.encode('utf-8')``). Four special tokens follow:
``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos, ends a chat turn) and ``<|MASK|>``
(the diffusion mask, written to config.json as ``mask_token_id``). The embedding has
:data:`VOCAB_SIZE` rows (a multiple of 64); the rows past the specials are never used.

For LMDeploy and ``AutoTokenizer`` the same vocabulary is written as a ``tokenizers`` byte-level
BPE without merges (ByteLevel pre-tokenizer and decoder map bytes to printable characters and
back), so the HF tokenizer produces exactly the ids of :func:`encode` (tested).
"""
import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from ..qwen3_tokenizer import CHAT_TEMPLATE

NUM_BYTES = 256
PAD_TOKEN, IM_START, IM_END, MASK_TOKEN = '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|MASK|>'
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, MASK_TOKEN)
PAD_ID, IM_START_ID, EOS_ID, MASK_ID = range(NUM_BYTES, NUM_BYTES + len(SPECIAL_TOKENS))
VOCAB_SIZE = 320  # embedding rows: 260 used, padded to a multiple of 64
MODEL_MAX_LENGTH = 4096


def encode(text: str) -> list[int]:
    return list(text.encode('utf-8'))


def decode(ids) -> str:
    """Text of the byte ids (special and unused ids are dropped, as skip_special_tokens does)."""
    return bytes(i for i in ids if i < NUM_BYTES).decode('utf-8', errors='replace')


def chat_prompt_ids(question: str) -> list[int]:
    """A one-turn ChatML prompt up to the assistant's answer (what ``CHAT_TEMPLATE`` renders)."""
    return ([IM_START_ID] + encode('user\n' + question) + [EOS_ID] + encode('\n') + [IM_START_ID] +
            encode('assistant\n'))


def byte_to_char() -> dict[int, str]:
    """The ByteLevel pre-tokenizer's byte -> printable character map.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are moved, in
    byte order, to code points 256, 257, ... so every byte has a visible, distinct character.
    """
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    mapping = {b: chr(b) for b in printable}
    moved = (b for b in range(NUM_BYTES) if b not in mapping)
    for n, b in enumerate(moved):
        mapping[b] = chr(NUM_BYTES + n)
    return mapping


def build_tokenizer() -> Tokenizer:
    vocab = {char: byte for byte, char in byte_to_char().items()}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False, byte_fallback=False))
    # one pre-token for the whole text: without merges a regex split would change nothing
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.add_special_tokens([_added_token(content) for content in SPECIAL_TOKENS])
    for content, token_id in zip(SPECIAL_TOKENS, range(PAD_ID, PAD_ID + len(SPECIAL_TOKENS))):
        if tokenizer.token_to_id(content) != token_id:
            raise RuntimeError(f'{content} got id {tokenizer.token_to_id(content)}, expected {token_id}')
    return tokenizer


def _added_token(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def _added_token_entry(content: str) -> dict:
    return dict(content=content, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)


def tokenizer_config() -> dict:
    return {
        'added_tokens_decoder': {str(PAD_ID + i): _added_token_entry(c) for i, c in enumerate(SPECIAL_TOKENS)},
        'additional_special_tokens': [IM_START, MASK_TOKEN],
        'bos_token': None,
        'chat_template': CHAT_TEMPLATE,
        'clean_up_tokenization_spaces': False,
        'eos_token': IM_END,
        'model_max_length': MODEL_MAX_LENGTH,
        'pad_token': PAD_TOKEN,
        'tokenizer_class': 'PreTrainedTokenizerFast',
        'unk_token': None,
    }


def special_tokens_map() -> dict:
    return {
        'additional_special_tokens': [IM_START, MASK_TOKEN],
        'eos_token': _added_token_entry(IM_END),
        'pad_token': _added_token_entry(PAD_TOKEN),
    }


def write_tokenizer_files(out_dir: str | Path) -> Path:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out / 'tokenizer.json'))
    for name, content in (('tokenizer_config.json', tokenizer_config()),
                          ('special_tokens_map.json', special_tokens_map())):
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    return out
