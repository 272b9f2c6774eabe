"""Request-boundary validation: a bad request is answered 400, naming the field and the allowed range,
before it can reach (and kill) the engine loop.

Two layers, both plain functions over plain values (CPU-tested in ``tests/test_serving_validation.py``):

* :func:`check_http_request`: the fields of an OpenAI / LMDeploy request body (``/v1/completions``,
  ``/v1/chat/completions``, ``/generate``), run by the api_server before upstream's own checks
  (patch 9, :mod:`lmdeploy_focus.patch.serve_validation`).
* :func:`check_generation_config` and :func:`check_input_ids`: the tokenised, templated request,
  run inside ``AsyncEngine.preprocess`` (patch 10), so ``pipeline()`` and ``lmdeploy chat`` get the same
  rules (as a ``Response`` with ``finish_reason='error'`` and the message) as the api_server (as a 400).

Every rejection is a :class:`FieldError` whose message starts with the field name and whose ``param``
holds it; :mod:`.boundary` turns it into upstream's ``RequestError(INVALID_REQUEST)`` (rendered 400 by
every endpoint). Nothing of upstream is imported here: the module is loaded while upstream's serve
package may still be initialising.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

MAX_SEED = 2**63 - 1
MAX_CHAT_N = 128  # upstream's fan-out cap (chat_completions.validation._MAX_FANOUT_N)
# Top logprobs per token, every endpoint: chat's cap (OpenAI's), and vLLM's default max_logprobs. Above it one
# request's host-side logprob lists stall the engine loop for its neighbours (~0.45 s a step at 100,000), and
# above the vocabulary upstream's torch.topk raises inside the step and ends the engine loop.
MAX_LOGPROBS = 20
# Entries of a chat request's logit_bias. Upstream applies them one indexing op per entry per row
# on the engine's loop, and a diffusion model's rows are every block position: a 150,000-entry map took ~19 s a
# step at L = 32 (CPU), stalling every request in the batch (one op per row since, upstream_fixes/logit_bias.py;
# the cap still bounds what a request builds and keeps per step).
MAX_LOGIT_BIAS = 300
# Stop / bad words and token ids of one request. Upstream pads every request's stop and bad-word table to the
# batch's longest and a diffusion model repeats it per block position: one request with 150,000 stop ids built a
# [B·L, 150,000] table (2.6 GiB at B·L = 2,048, 3 s on the engine loop per step, CPU). Each stop word also costs a
# scan of the vocabulary on the server's event loop (upstream's indexes_containing_token, ~6 ms with a 151k vocabulary,
# cached for the last 10 words only): 1,500 words held every other request for 9 s.
MAX_STOP_WORDS = 16
MAX_STOP_TOKEN_IDS = 256
MAX_ENGINE_TOKEN_IDS = 4 * MAX_STOP_TOKEN_IDS  # the raw Engine API's stop / bad id lists, after upstream's growth
# where an HTTP request carries GenerationConfig.stop_words, for messages of the engine-side check
STOP_WORDS_HTTP_NAMES = ' (over HTTP: `stop`; `stop_sequences` on /v1/messages)'


class FieldError(ValueError):
    """An invalid request field: rendered as 400 with ``message = '<field>: <rule>'``."""
    status_code = 400

    def __init__(self, param: str, rule: str):
        self.param = param
        self.message = f'{param}: {rule}'
        super().__init__(self.message)

    def to_request_error(self):
        """Upstream's ``RequestError(INVALID_REQUEST)`` with this message, ``param`` attached."""
        from lmdeploy.serve.core.exceptions import ErrorCode, RequestError
        error = RequestError(ErrorCode.INVALID_REQUEST, self.message)
        error.param = self.param
        return error


@dataclass(frozen=True)
class ModelLimits:
    """What a request is checked against. ``mask_token`` is set for diffusion models only."""
    vocab_size: int | None
    session_len: int | None
    mask_token: int | None = None
    # an engine that is not prefill/decode-disaggregated (role Hybrid) has no use for a request's KV-migration fields
    hybrid: bool = False
    # whether the engine computes logprobs (its logprobs_mode is set); None: unknown (not a PyTorch engine config)
    logprobs: bool | None = None

    @property
    def dllm(self) -> bool:
        return self.mask_token is not None


# numbers.Real / Integral: numpy scalars (np.int64 from an array, np.float32) are numbers, as upstream accepted them
def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def repetition_window() -> int:
    """Upstream's n-gram window (``LMDEPLOY_REPETITION_WINDOW_SIZE``, 1024 by default): its n-gram check trims the
    ids to it but sizes its match mask from the largest ``repetition_ngram_size`` of the batch."""
    try:
        from lmdeploy.pytorch import envs
    except ImportError:  # no PyTorch engine installed: upstream's default
        return 1024
    return int(getattr(envs, 'repetition_window_size', 1024))


def _check_repetition_ngram(size, threshold) -> None:
    """An n-gram longer than upstream's window raises a shape error inside the batch's sampling step once a
    neighbour with another n-gram size is in the batch (the engine loop ends); a count past int64 failed the
    request's sampling inputs (the rule stops at int32, far past any useful count). Zero or negative values
    turn the check off (upstream's rule) and stay allowed."""
    window = repetition_window()
    if size is not None and not (_integer(size) and size <= window):
        raise FieldError('repetition_ngram_size', f'must be an integer <= {window} (the n-gram window, '
                         f'LMDEPLOY_REPETITION_WINDOW_SIZE; 0: off), got {size!r}')
    if threshold is not None and not (_integer(threshold) and threshold < 2**31):
        raise FieldError('repetition_ngram_threshold', f'must be an integer below 2**31 (0: off), got {threshold!r}')


def _check_logprobs(field: str, value) -> None:
    """A top-logprobs count, every endpoint: ``None`` means "not given"."""
    if value is not None and not (_integer(value) and 0 <= value <= MAX_LOGPROBS):
        raise FieldError(field, f'must be an integer in [0, {MAX_LOGPROBS}], got {value!r}')


# ---- sampling values (shared by both layers) -------------------------------------------------------------


MIN_DLLM_TEMPERATURE = 1e-3


def check_dllm_temperature(temperature, field: str = 'temperature') -> None:
    """A diffusion model ranks a block's slots by their tempered probabilities: a tiny temperature makes every
    confidence ~1 (dynamic unmasking then decodes the whole block at once), and below 1e-3 fp16 scores overflow (NaN
    confidences, an arbitrary token). ``0`` is greedy decoding with untempered confidences."""
    if _number(temperature) and 0 < temperature < MIN_DLLM_TEMPERATURE:
        raise FieldError(field, f'a diffusion model needs a temperature of 0 (greedy) or at least '
                         f'{MIN_DLLM_TEMPERATURE:g} (below it fp16 scores overflow and every confidence is ~1), got '
                         f'{temperature!r}')


def check_sampling(*, temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None,
                   seed=None, names: dict | None = None) -> None:
    """The sampling values common to every request type; ``None`` means "not given"."""
    names = names or {}

    def name(key):
        return names.get(key, key)

    if temperature is not None and not (_number(temperature) and 0 <= temperature <= 2):
        raise FieldError(name('temperature'), f'must be a number in [0, 2], got {temperature!r}')
    if top_p is not None and not (_number(top_p) and 0 < top_p <= 1):
        raise FieldError(name('top_p'), f'must be a number in (0, 1], got {top_p!r}')
    if top_k is not None and not (_integer(top_k) and top_k >= 0):
        raise FieldError(name('top_k'), f'must be an integer >= 0 (0: no top-k), got {top_k!r}')
    if min_p is not None and not (_number(min_p) and 0 <= min_p <= 1):
        raise FieldError(name('min_p'), f'must be a number in [0, 1], got {min_p!r}')
    if repetition_penalty is not None and not (_number(repetition_penalty) and repetition_penalty > 0):
        raise FieldError(name('repetition_penalty'), f'must be a number > 0 (1.0: no penalty), got {repetition_penalty!r}')
    if seed is not None and not (_integer(seed) and 0 <= seed <= MAX_SEED):
        raise FieldError(name('seed'), f'must be an integer in [0, 2**63 - 1], got {seed!r}')


def check_max_tokens(name: str, value, allow_zero: bool = False) -> None:
    """A token budget (``max_tokens``, ``max_new_tokens``, ...): ``None`` means "not given"."""
    low = 0 if allow_zero else 1
    if value is not None and not (_integer(value) and value >= low):
        raise FieldError(name, f'must be an integer >= {low}, got {value!r}')


def _check_stop_list(stop) -> None:
    if stop is None:
        return
    words = [stop] if isinstance(stop, str) else stop
    if len(words) > MAX_STOP_WORDS:
        raise FieldError('stop', f'at most {MAX_STOP_WORDS} stop strings, got {len(words)}')
    for i, word in enumerate(words):
        if not isinstance(word, str) or word == '':
            raise FieldError('stop', f'entry {i} must be a non-empty string, got {word!r}')


# ---- layer 1: the HTTP request body --------------------------------------------------------------------


def _check_chat_messages(messages) -> None:
    """The shape every chat template reads: a message is an object with a string ``role`` and a ``content`` that is
    a string, null (e.g. an assistant turn with tool calls) or a list of typed parts. Upstream answered a missing
    role with 'Request preprocessing failed.' and a number as content with "'int' object is not iterable"."""
    if not isinstance(messages, list):
        return  # a plain string prompt, or upstream's own schema error
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise FieldError('messages', f'entry {i} must be an object with role and content, got '
                             f'{type(message).__name__}')
        if not isinstance(message.get('role'), str):
            raise FieldError('messages', f'entry {i} needs a string role (system, user, assistant, tool), got '
                             f'{message.get("role")!r}')
        content = message.get('content')
        if not (content is None or isinstance(content, str) or isinstance(content, list)):
            raise FieldError('messages', f'entry {i}: content must be a string, null or a list of parts, got '
                             f'{type(content).__name__}')
        if isinstance(content, list):
            bad = next((j for j, part in enumerate(content) if not isinstance(part, dict)), None)
            if bad is not None:
                raise FieldError('messages', f'entry {i}: content part {bad} must be an object with a type, got '
                                 f'{type(content[bad]).__name__}')
            known = _content_part_types()
            bad = next((j for j, part in enumerate(content) if part.get('type') not in known), None)
            if bad is not None:  # upstream keeps the text parts and drops any other, silently
                raise FieldError('messages', f'entry {i}: content part {bad} has type {content[bad].get("type")!r}; '
                                 f'allowed: {", ".join(sorted(known))}')


def _content_part_types() -> frozenset:
    from lmdeploy.serve.processors.multimodal import MULTIMODAL_TYPES
    return frozenset(('text', *MULTIMODAL_TYPES))


def check_http_request(request, *, endpoint: str, dllm: bool = False, session_len: int | None = None) -> None:
    """Raise :class:`FieldError` for an invalid field of a request body. ``endpoint`` is one of
    ``'completions'``, ``'chat'``, ``'generate'``. Upstream's own checks run after this one."""
    get = lambda key: getattr(request, key, None)  # noqa: E731
    check_sampling(temperature=get('temperature'), top_p=get('top_p'), top_k=get('top_k'), min_p=get('min_p'),
                   repetition_penalty=get('repetition_penalty'), seed=get('seed'))
    if dllm:
        check_dllm_temperature(get('temperature'))
    start = get('logprob_start_len')
    input_logprobs = endpoint == 'generate' and start is not None and start >= 0
    check_max_tokens('max_tokens', get('max_tokens'), allow_zero=input_logprobs)
    check_max_tokens('max_completion_tokens', get('max_completion_tokens'))
    min_new = get('min_new_tokens')
    if min_new is not None:
        check_max_tokens('min_new_tokens', min_new, allow_zero=True)
        limit = get('max_completion_tokens') or get('max_tokens')
        if limit is not None and min_new > limit:
            raise FieldError('min_new_tokens', f'must be <= max_tokens ({limit}), got {min_new}')
        # without max_tokens the budget is what the session leaves after the prompt (unknown here): a minimum of the
        # whole session can never be met, and upstream's engine would drop it with a log line only
        if limit is None and session_len is not None and min_new >= session_len:
            raise FieldError('min_new_tokens', f'must be below the session length ({session_len}), got {min_new}')
    _check_stop_list(get('stop'))
    n = get('n')
    if endpoint == 'completions':
        if n is not None and n != 1:
            raise FieldError('n', f'only n = 1 is supported on /v1/completions, got {n!r}')
        logprobs = get('logprobs')
        if logprobs:  # upstream's completion stream raises on logprobs ('logprobs is removed')
            raise FieldError('logprobs', 'not supported on /v1/completions (allowed: null or 0); '
                             'use /v1/chat/completions with logprobs: true')
        prompt = get('prompt')
        if isinstance(prompt, list):
            if not prompt:
                raise FieldError('prompt', 'must be a non-empty string or a non-empty list of strings')
            bad = next((i for i, p in enumerate(prompt) if not isinstance(p, str)), None)
            if bad is not None:
                raise FieldError('prompt', f'entry {bad} must be a string, got {type(prompt[bad]).__name__}')
    elif endpoint == 'chat':
        if n is not None and not (_integer(n) and 1 <= n <= MAX_CHAT_N):
            raise FieldError('n', f'must be an integer in [1, {MAX_CHAT_N}], got {n!r}')
        seed = get('seed')
        if seed is not None and n is not None and seed + n - 1 > MAX_SEED:
            # upstream's fan-out gives choice i the seed seed + i, each checked again
            raise FieldError('seed', f'with n = {n} choices (choice i samples with seed + i) must be at most '
                             f'2**63 - {n}, got {seed}')
        _check_chat_messages(get('messages'))
        template_kwargs = get('chat_template_kwargs') or {}
        for key in ('continue_final_message', 'add_generation_prompt'):
            if isinstance(template_kwargs, dict) and key in template_kwargs:
                # upstream derives both from the last message's role; continue_final_message then cut the final
                # assistant message's last characters (the template's end marker, removed a second time)
                raise FieldError('chat_template_kwargs', f'{key} is set by the server from the last message (an '
                                 f'assistant message is continued, after a user message a reply starts): leave it out')
        _check_logprobs('top_logprobs', get('top_logprobs'))
        bias = get('logit_bias')
        if bias is not None and len(bias) > MAX_LOGIT_BIAS:
            raise FieldError('logit_bias', f'at most {MAX_LOGIT_BIAS} entries, got {len(bias)}')
        if dllm and get('tool_choice') == 'required':
            # the tool parser turns it into guided output (a response_format the client never sent)
            raise FieldError('tool_choice', "'required' needs guided output, which diffusion models do not have "
                             "(a block is decoded in parallel); allowed: 'auto', 'none' or a named function")
    elif endpoint == 'generate':
        _check_logprobs('top_logprobs_num', get('top_logprobs_num'))
        if dllm and input_logprobs:
            raise FieldError('logprob_start_len', 'input logprobs are not available for diffusion models '
                             '(allowed: -1)')


# ---- layer 2: the templated, tokenised request (AsyncEngine.preprocess) ----------------------------------


# request fields of prefill/decode disaggregation, and what each does on an engine that is not disaggregated
KV_MIGRATION_FIELDS = {
    'preserve_cache': 'the engine would keep the session and its KV cache after the request ends, for good',
    'migration_request': 'the request would wait for a KV migration that this engine never runs',
}


def check_no_kv_migration(value_of) -> None:
    """``value_of(field)``: a request's value of each :data:`KV_MIGRATION_FIELDS` field (falsy: not asked for)."""
    for field, why in KV_MIGRATION_FIELDS.items():
        if value_of(field):
            raise FieldError(field, f'only for a prefill/decode-disaggregated server (--role Prefill / Decode): '
                                    f'here {why}; allowed: false / null')


def check_generation_config(gen_config, limits: ModelLimits, encode=None) -> None:
    """The :class:`~lmdeploy.GenerationConfig` a request arrives with, before upstream normalises it
    (greedy decoding overwrites ``top_k`` / ``temperature``). ``encode(word) -> list[int]`` checks
    that every stop word is one token of the tokenizer (upstream silently drops the others)."""
    if gen_config is None:
        return
    check_sampling(temperature=gen_config.temperature, top_p=gen_config.top_p, top_k=gen_config.top_k,
                   min_p=gen_config.min_p, repetition_penalty=gen_config.repetition_penalty,
                   seed=gen_config.random_seed, names={'seed': 'random_seed'})
    if limits.dllm:
        check_dllm_temperature(gen_config.temperature)
    input_logprobs = gen_config.logprob_start_len is not None and gen_config.logprob_start_len >= 0
    check_max_tokens('max_new_tokens', gen_config.max_new_tokens, allow_zero=input_logprobs)
    if gen_config.min_new_tokens is not None:
        check_max_tokens('min_new_tokens', gen_config.min_new_tokens, allow_zero=True)
        if gen_config.max_new_tokens is not None and gen_config.min_new_tokens > gen_config.max_new_tokens:
            # upstream drops it with a log line (SamplingParam.from_gen_config), so the minimum is silently not kept
            raise FieldError('min_new_tokens', f'must be <= max_new_tokens ({gen_config.max_new_tokens}), got '
                             f'{gen_config.min_new_tokens}')
    if gen_config.n != 1:
        raise FieldError('n', f'only n = 1 is supported per engine request, got {gen_config.n!r}')
    if limits.hybrid:
        check_no_kv_migration(lambda field: getattr(gen_config, field, None))
    _check_repetition_ngram(gen_config.repetition_ngram_size, gen_config.repetition_ngram_threshold)
    _check_logprobs('logprobs', gen_config.logprobs)
    if gen_config.logprobs and limits.logprobs is False:
        # upstream's api_server refuses this; the engine itself returns no logprobs, silently
        raise FieldError('logprobs', f'{gen_config.logprobs} top logprobs asked, but the engine computes none: start '
                         "it with PytorchEngineConfig(logprobs_mode='raw_logprobs') (api_server: --logprobs-mode "
                         'raw_logprobs), or leave logprobs unset')
    _check_top_k_in_vocabulary(gen_config.top_k, limits)
    if limits.dllm and gen_config.response_format is not None:
        raise FieldError('response_format', 'guided output is not available for diffusion models (a block is '
                         'decoded in parallel, a grammar matcher follows one token at a time); allowed: null')
    if limits.dllm and input_logprobs:
        raise FieldError('logprob_start_len', 'input logprobs are not available for diffusion models (allowed: -1)')
    if limits.dllm and gen_config.output_logits is not None:
        raise FieldError('output_logits', 'not available for diffusion models (allowed: null)')
    if limits.dllm and gen_config.return_ppl:
        # a left-to-right cross-entropy of the prompt, which a diffusion model does not define (pipeline.get_ppl
        # skips this boundary: refused in boundary.NOT_FOR_DIFFUSION)
        raise FieldError('return_ppl', 'perplexity is not available for diffusion models (allowed: False)')
    if limits.dllm and gen_config.output_last_hidden_state is not None:
        raise FieldError('output_last_hidden_state', 'not available for diffusion models (allowed: null)')
    if limits.dllm and getattr(gen_config, 'return_routed_experts', False):
        # upstream's diffusion sequences never record them: the answer carried null
        raise FieldError('return_routed_experts', 'not available for diffusion models (allowed: false)')
    for field in ('stop_token_ids', 'bad_token_ids'):
        ids = getattr(gen_config, field) or []
        if len(ids) > MAX_STOP_TOKEN_IDS:
            raise FieldError(field, f'at most {MAX_STOP_TOKEN_IDS} token ids, got {len(ids)}')
        _check_tokens(field, ids, limits)
    for field in ('stop_words', 'bad_words'):
        words = getattr(gen_config, field)
        if words is None:
            continue
        # this layer sees the engine's name; an HTTP client sent it under the name of its endpoint
        said = STOP_WORDS_HTTP_NAMES if field == 'stop_words' else ''
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise FieldError(field, f'must be a list of non-empty strings, got {words!r}{said}')
        if len(words) > MAX_STOP_WORDS:
            raise FieldError(field, f'at most {MAX_STOP_WORDS} strings, got {len(words)}{said}')
        if encode is None:
            continue
        for word in words:
            ids = encode(word)
            if len(ids) != 1:
                ids_field = 'stop_token_ids' if field == 'stop_words' else 'bad_token_ids'
                raise FieldError(field, f'{word!r} is {len(ids)} tokens of this tokenizer; only single-token '
                                 f'strings are supported (use {ids_field} for others){said}')
            _check_token(field, ids[0], limits, what=f'{word!r}: token id', said=said)  # the token-id lists' rule


def _check_top_k_in_vocabulary(top_k, limits: ModelLimits) -> None:
    # upstream's sampler takes torch.topk(logits, max top_k of the batch): k > vocab raises inside the step
    if limits.vocab_size is not None and _integer(top_k) and top_k > limits.vocab_size:
        raise FieldError('top_k', f'must be an integer in [0, {limits.vocab_size}] (at most the vocabulary size; '
                         f'0: no top-k), got {top_k}')


def check_sampling_param(sampling_param, limits: ModelLimits) -> None:
    """The engine's ``SamplingParam`` of a request that skipped :func:`check_generation_config` (the raw ``Engine``
    API): the rules that keep the batch's sampler from failing inside the step (which ends the engine loop, and on
    a GPU an out-of-range gather ends the process). Stop and bad words are token ids here."""
    # Only what would fail inside the step: upstream's SamplingParam.from_gen_config already replaced out-of-range
    # values (and draws 64-bit seeds itself), so the request boundary's ranges do not apply here, but a NaN passes it
    for field in ('temperature', 'top_p', 'min_p', 'repetition_penalty'):
        value = getattr(sampling_param, field)
        if not (_number(value) and math.isfinite(value)):
            raise FieldError(field, f'must be a finite number, got {value!r}')
    check_sampling(top_k=sampling_param.top_k)
    _check_top_k_in_vocabulary(sampling_param.top_k, limits)
    for field in ('max_new_tokens', 'min_new_tokens'):
        # a float budget turns the batch's stopping counters float (torch.tensor over the batch): a neighbour's
        # stop position then slices its output with a float in the engine loop
        value = getattr(sampling_param, field, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise FieldError(field, f'must be an integer, got {value!r}')
    if sampling_param.num_logprobs is not None and sampling_param.num_logprobs > 0:
        _check_logprobs('logprobs', sampling_param.num_logprobs)
    _check_repetition_ngram(sampling_param.repetition_ngram_size, sampling_param.repetition_ngram_threshold)
    # the request boundary's cap (a cost bound) would meet lists upstream grows after it (stop words' ids, the
    # model's eos ids, ignore_eos moving stop ids to the bad ones), so this one is looser: it bounds the table the
    # batch's sampler builds (every row padded to the longest list: 150,000 ids from one request were 2.6 GiB)
    for field, ids in (('stop_words', sampling_param.stop_words), ('bad_words', sampling_param.bad_words)):
        if ids is not None and len(ids) > MAX_ENGINE_TOKEN_IDS:
            raise FieldError(field, f'at most {MAX_ENGINE_TOKEN_IDS} token ids, got {len(ids)}')
        _check_tokens(field, ids or [], limits)


def check_construction(gen_config) -> None:
    """What ``GenerationConfig(...)`` itself must refuse (patch 15): the sampling values, and a negative
    ``max_new_tokens``. Zero and ``None`` stay allowed here: upstream builds configs with
    ``max_new_tokens=0`` (logits / reward scoring) and ``None`` (the api_server without ``max_tokens``);
    a request's budget is checked by :func:`check_generation_config` at the request boundary."""
    check_sampling(temperature=gen_config.temperature, top_p=gen_config.top_p, top_k=gen_config.top_k,
                   min_p=gen_config.min_p, repetition_penalty=gen_config.repetition_penalty,
                   seed=gen_config.random_seed, names={'seed': 'random_seed'})
    check_max_tokens('max_new_tokens', gen_config.max_new_tokens, allow_zero=True)


def _check_token(field: str, token, limits: ModelLimits, what: str, said: str = '') -> None:
    if not _integer(token):
        raise FieldError(field, f'{what}s must be integers, got {token!r}{said}')
    if limits.vocab_size is not None and not (0 <= token < limits.vocab_size):
        raise FieldError(field, f'{what} {token} is outside the vocabulary [0, {limits.vocab_size}){said}')
    if limits.mask_token is not None and token == limits.mask_token:
        raise FieldError(field, f'{what} {token} is the diffusion mask token, which a request may not contain{said}')


def _check_tokens(field: str, tokens, limits: ModelLimits) -> None:
    """:func:`_check_token` for every id of a list. A prompt is checked on the server's loop for every request, so
    plain ints go through C-speed passes (type set, min / max, membership; :func:`check_input_ids` on 32k ids: 1.7 ms,
    4.8 ms with a per-id loop); anything else goes through the per-id loop, which names the bad id."""
    if set(map(type, tokens)) <= {int}:
        vocab, mask = limits.vocab_size, limits.mask_token
        in_vocab = vocab is None or not tokens or (min(tokens) >= 0 and max(tokens) < vocab)
        if in_vocab and (mask is None or mask not in tokens):
            return
    for token in tokens:
        _check_token(field, token, limits, what='token id')


# decoding a prompt whole costs about a microsecond a token on the server's loop; its first tokens settle most
PROMPT_TEXT_HEAD = 64


def _prompt_text(input_ids, decode) -> str:
    """The prompt's text, or enough of it to tell it is not empty or whitespace only: the decoded first
    :data:`PROMPT_TEXT_HEAD` ids where they hold visible text, else the whole prompt decoded."""
    if len(input_ids) > PROMPT_TEXT_HEAD:
        head = decode(list(input_ids[:PROMPT_TEXT_HEAD]))
        # a character cut at the head's end decodes to U+FFFD, which says nothing (U+3000 x 100 read as text)
        if head.rstrip('\ufffd').strip():
            return head
    return decode(list(input_ids))


def check_input_ids(input_ids, limits: ModelLimits, *, max_new_tokens=None, decode=None, field='prompt',
                    min_new_tokens=None) -> None:
    """The templated, tokenised prompt. ``decode(ids) -> str`` finds a whitespace-only prompt;
    ``max_new_tokens`` (if given) must fit the session with the prompt, and so must ``min_new_tokens``
    (upstream drops a minimum above the answer's room with a log line)."""
    if input_ids is None or len(input_ids) == 0:
        raise FieldError(field, 'is empty after templating and tokenisation; a request needs at least one '
                         'input token')
    _check_tokens(field, input_ids, limits)
    text = _prompt_text(input_ids, decode) if decode is not None else None
    if text == '':
        raise FieldError(field, 'decodes to no text (token ids the tokenizer has no text for); a request needs '
                         'some non-whitespace input')
    if text is not None and text.strip() == '':
        raise FieldError(field, 'is whitespace only; a request needs some non-whitespace input')
    if limits.session_len is not None and max_new_tokens is not None:
        room = limits.session_len - len(input_ids)
        if max_new_tokens > room:
            raise FieldError('max_tokens', f'{max_new_tokens} does not fit: the prompt has {len(input_ids)} tokens '
                             f'and the session length is {limits.session_len}, so allowed is [1, {max(room, 0)}] '
                             f'(pipeline(): GenerationConfig.max_new_tokens; lmdeploy chat: --max-new-tokens, or a '
                             f'larger --session-len)')
    if limits.session_len is not None and min_new_tokens:
        room = limits.session_len - len(input_ids)
        if min_new_tokens > room:
            raise FieldError('min_new_tokens', f'{min_new_tokens} cannot be met: the prompt has {len(input_ids)} '
                             f'tokens and the session length is {limits.session_len}, so allowed is [0, {max(room, 0)}]')
