"""Pure logic of the serving soak check (``checks/serving_soak_check.py``): the request mix, the
classification of each answer, and the verdict. CPU-tested in ``tests/test_serving_soak_logic.py``."""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

PROMPTS = ['The capital of France is', 'Write a short story about a robot.', 'List three colours:',
           'def fibonacci(n):', 'Q: What is 12 + 7?\nA:', 'Once upon a time', 'Explain block diffusion.',
           'The quick brown fox']

# (path, body fields, the field the 400 must name): every rule of lmdeploy_focus.serving.validation that an
# HTTP client can reach; ``MASK`` / ``VOCAB`` / ``VOCAB+1`` are replaced by the model's mask token / vocabulary
# size / one more.
BAD_REQUESTS = [
    ('/v1/completions', dict(prompt=''), 'prompt'),
    ('/v1/completions', dict(prompt='   \n\t '), 'prompt'),
    ('/v1/completions', dict(prompt='hi', top_p=7), 'top_p'),
    ('/v1/completions', dict(prompt='hi', top_p=0), 'top_p'),
    ('/v1/completions', dict(prompt='hi', top_k=-1), 'top_k'),
    ('/v1/completions', dict(prompt='hi', temperature=-1), 'temperature'),
    ('/v1/completions', dict(prompt='hi', max_tokens=0), 'max_tokens'),
    ('/v1/completions', dict(prompt='hi', max_tokens=10**7), 'max_tokens'),
    ('/v1/completions', dict(prompt='hi', n=2), 'n'),
    ('/v1/completions', dict(prompt='hi', logprobs=3), 'logprobs'),
    ('/v1/completions', dict(prompt='hi', stop=['this is many tokens']), 'stop_words'),
    ('/v1/completions', dict(prompt='hi', stream=True, top_k=-3), 'top_k'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], top_p=1.5), 'top_p'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], max_tokens=-4), 'max_tokens'),
    ('/v1/chat/completions', dict(messages=[], input_ids=[5, 'MASK']), 'prompt'),
    ('/generate', dict(input_ids=[5, 6, 'VOCAB'], max_tokens=8), 'prompt'),
    ('/generate', dict(input_ids=[5, 6, 'MASK'], max_tokens=8), 'prompt'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=8, stop_token_ids=['VOCAB']), 'stop_token_ids'),
    ('/generate', dict(input_ids=[], max_tokens=8), 'input_ids'),  # upstream's own rule, named by upstream
    # each of these ended the engine loop before 2026-12-06 (torch.topk past the vocabulary inside the step)
    ('/v1/completions', dict(prompt='hi', top_k=10**6, temperature=0.8), 'top_k'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], top_k='VOCAB+1'), 'top_k'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=8, return_logprob=True, top_logprobs_num=10**6),
     'top_logprobs_num'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}],
                                  response_format={'type': 'json_object'}), 'response_format'),
]

KINDS = ('completion', 'chat', 'completion_stream', 'chat_stream', 'disconnect', 'stop_string', 'stop_ids',
         'odd_max_tokens', 'no_skip_special', 'sampled', 'bad')


@dataclass
class Spec:
    index: int
    kind: str
    path: str
    body: dict
    stream: bool = False
    expect_field: str | None = None  # bad requests: the field the 4xx must name
    disconnect_after: int | None = None  # chunks read before the client hangs up
    greedy: bool = True
    encode_prompt: str | None = None  # the driver sets body['input_ids'] from the server's /v1/encode

    def to_dict(self):
        return asdict(self)


def _fill(value, mask: int, vocab: int):
    if value == 'MASK':
        return mask
    if value == 'VOCAB':
        return vocab
    if value == 'VOCAB+1':
        return vocab + 1
    if isinstance(value, list):
        return [_fill(v, mask, vocab) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, mask, vocab) for k, v in value.items()}
    return value


def odd_max_tokens(rng: random.Random, block_length: int) -> int:
    """A max_tokens that is not a multiple of the block length (cuts mid-block)."""
    value = rng.randrange(1, 4 * block_length)
    return value + 1 if value % block_length == 0 else value


def build_mix(num_requests: int, *, model: str, block_length: int, mask_token: int, vocab_size: int,
              stop_token_ids: list[int], stop_strings: list[str], seed: int = 0, bad_fraction: float = 0.1) -> list[Spec]:
    """``num_requests`` requests: every bad request of :data:`BAD_REQUESTS` at least once (then at
    ``bad_fraction`` overall), the rest cycling through the good kinds with random prompts, greedy and
    sampled side by side."""
    rng = random.Random(seed)
    good_kinds = [k for k in KINDS if k != 'bad']
    num_bad = max(len(BAD_REQUESTS), int(num_requests * bad_fraction))
    if num_requests < num_bad + len(good_kinds):
        raise ValueError(f'num_requests must be >= {num_bad + len(good_kinds)} to hold every kind')
    kinds = ['bad'] * num_bad + [good_kinds[i % len(good_kinds)] for i in range(num_requests - num_bad)]
    rng.shuffle(kinds)
    specs, bad_index = [], 0
    for index, kind in enumerate(kinds):
        prompt = rng.choice(PROMPTS)
        max_tokens = odd_max_tokens(rng, block_length)
        chat_body = dict(model=model, messages=[{'role': 'user', 'content': prompt}], max_tokens=max_tokens,
                         temperature=0.0, top_k=1)
        text_body = dict(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
        if kind == 'bad':
            path, fields, expect = BAD_REQUESTS[bad_index % len(BAD_REQUESTS)]
            bad_index += 1
            body = dict(model=model, **_fill(fields, mask_token, vocab_size)) if path != '/generate' else \
                _fill(fields, mask_token, vocab_size)
            specs.append(Spec(index, kind, path, body, stream=bool(body.get('stream')), expect_field=expect))
        elif kind == 'completion':
            specs.append(Spec(index, kind, '/v1/completions', text_body))
        elif kind == 'chat':
            specs.append(Spec(index, kind, '/v1/chat/completions', chat_body))
        elif kind in ('completion_stream', 'chat_stream'):
            base = text_body if kind == 'completion_stream' else chat_body
            path = '/v1/completions' if kind == 'completion_stream' else '/v1/chat/completions'
            specs.append(Spec(index, kind, path, dict(base, stream=True), stream=True))
        elif kind == 'disconnect':
            specs.append(Spec(index, kind, '/v1/completions', dict(text_body, stream=True, max_tokens=8 * block_length + 5),
                              stream=True, disconnect_after=rng.randrange(1, 3)))
        elif kind == 'stop_string':
            specs.append(Spec(index, kind, '/v1/completions', dict(text_body, stop=[rng.choice(stop_strings)])))
        elif kind == 'stop_ids':
            body = dict(input_ids=None, max_tokens=max_tokens, stop_token_ids=[rng.choice(stop_token_ids)],
                        temperature=0.0, top_k=1)
            specs.append(Spec(index, kind, '/generate', body, encode_prompt=prompt))
        elif kind == 'odd_max_tokens':
            specs.append(Spec(index, kind, '/v1/chat/completions', dict(chat_body, stream=True), stream=True))
        elif kind == 'no_skip_special':
            specs.append(Spec(index, kind, '/v1/completions', dict(text_body, skip_special_tokens=False)))
        elif kind == 'sampled':
            body = dict(text_body, temperature=0.8, top_p=0.9, top_k=20, seed=rng.randrange(2**31))
            specs.append(Spec(index, kind, '/v1/completions', body, greedy=False))
    return specs


# ---- classification ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    index: int
    kind: str
    category: str  # ok | bad_ok | disconnected | server_error | dropped | wrong_status | unnamed_field | malformed | mask_token
    status: int | None = None
    detail: str = ''
    text: str | None = None

    @property
    def passed(self) -> bool:
        return self.category in ('ok', 'bad_ok', 'disconnected')


def _error_names_field(payload, field: str) -> bool:
    if not isinstance(payload, dict):
        return False
    error = payload.get('error', payload)
    if not isinstance(error, dict):
        return False
    message = str(error.get('message', ''))
    return error.get('param') == field or message.startswith(f'{field}:') or f'{field}' in message.split(':')[0]


def parse_sse(raw: str) -> tuple[list[dict], bool, str | None]:
    """(chunks, saw [DONE], problem) of a text/event-stream body."""
    chunks, done = [], False
    for line in raw.splitlines():
        if not line.strip():
            continue
        if not line.startswith('data: '):
            return chunks, done, f'not an SSE data line: {line[:80]!r}'
        data = line[len('data: '):]
        if data == '[DONE]':
            done = True
            continue
        if done:
            return chunks, done, 'data after [DONE]'
        try:
            chunks.append(json.loads(data))
        except json.JSONDecodeError:
            return chunks, done, f'chunk is not JSON: {data[:80]!r}'
    return chunks, done, None


def response_text(spec: Spec, payload) -> tuple[str | None, str | None, int | None, str | None]:
    """(text, finish_reason, completion_tokens, problem) of a non-streamed success body."""
    try:
        if spec.path == '/generate':
            meta = payload['meta_info']
            return payload['text'], meta['finish_reason']['type'] if isinstance(meta['finish_reason'], dict) \
                else meta['finish_reason'], meta['completion_tokens'], None
        choice = payload['choices'][0]
        text = choice['text'] if spec.path == '/v1/completions' else choice['message']['content']
        return text, choice['finish_reason'], payload['usage']['completion_tokens'], None
    except (KeyError, IndexError, TypeError) as e:
        return None, None, None, f'malformed body ({type(e).__name__}: {e})'


def stream_text(spec: Spec, chunks: list[dict]) -> tuple[str, str | None, str | None]:
    """(text, finish_reason, problem) of streamed chunks."""
    text, finish = '', None
    for chunk in chunks:
        if 'error' in chunk:
            return text, finish, f'error chunk: {chunk["error"]}'
        for choice in chunk.get('choices', []):
            if spec.path == '/v1/completions':
                text += choice.get('text') or ''
            else:
                text += (choice.get('delta') or {}).get('content') or ''
            finish = choice.get('finish_reason') or finish
    return text, finish, None


def classify(spec: Spec, *, status: int | None, body: str | None, error: str | None, mask_text: str,
             disconnected: bool = False, mask_id: int | None = None) -> Outcome:
    """One request's outcome. ``error``: the client-side exception (connection dropped, timeout);
    ``disconnected``: the client hung up on purpose mid-stream."""
    out = Outcome(spec.index, spec.kind, 'ok', status)
    if disconnected and spec.disconnect_after is not None:
        out.category = 'disconnected' if status in (200, None) else 'wrong_status'
        return out
    if error is not None:
        out.category, out.detail = 'dropped', error
        return out
    if status is None:
        out.category, out.detail = 'dropped', 'no status'
        return out
    if status >= 500:
        out.category, out.detail = 'server_error', (body or '')[:300]
        return out
    if spec.expect_field is not None:
        if not 400 <= status < 500:
            out.category, out.detail = 'wrong_status', f'bad request answered {status}'
            return out
        try:
            payload = json.loads(body or '')
        except json.JSONDecodeError:
            out.category, out.detail = 'malformed', f'4xx body is not JSON: {(body or "")[:120]!r}'
            return out
        if not _error_names_field(payload, spec.expect_field):
            out.category, out.detail = 'unnamed_field', f'expected {spec.expect_field!r}: {(body or "")[:200]}'
            return out
        out.category = 'bad_ok'
        return out
    if status != 200:
        out.category, out.detail = 'wrong_status', (body or '')[:300]
        return out
    max_tokens = spec.body.get('max_tokens')
    if spec.stream:
        chunks, done, problem = parse_sse(body or '')
        if problem is None and not done:
            problem = 'stream ended without [DONE]'
        text, finish, chunk_problem = stream_text(spec, chunks)
        problem = problem or chunk_problem
        completion_tokens = None
    else:
        try:
            payload = json.loads(body or '')
        except json.JSONDecodeError:
            payload, problem = None, 'body is not JSON'
            text = finish = completion_tokens = None
        else:
            text, finish, completion_tokens, problem = response_text(spec, payload)
            if problem is None and mask_id is not None and mask_id in (payload.get('output_ids') or []):
                out.category, out.detail = 'mask_token', f'mask token id {mask_id} in output_ids'
                return out
    if problem is None and finish not in ('stop', 'length'):
        problem = f'finish_reason {finish!r}'
    if problem is None and completion_tokens is not None and max_tokens is not None and completion_tokens > max_tokens:
        problem = f'{completion_tokens} completion tokens > max_tokens {max_tokens}'
    if problem is not None:
        out.category, out.detail = 'malformed', problem
        return out
    out.text = text
    if mask_text and text and mask_text in text:
        out.category, out.detail = 'mask_token', f'{mask_text!r} in the output'
    return out


# ---- verdict -------------------------------------------------------------------------------------------


@dataclass
class ArmReport:
    arm: str
    outcomes: list = field(default_factory=list)
    engine_deaths: int = 0
    health_after: int | None = None
    gpu_mem_warm_mib: float | None = None
    gpu_mem_after_mib: float | None = None
    greedy_before: list = field(default_factory=list)
    greedy_after: list = field(default_factory=list)
    seconds: float = 0.0
    metrics_excerpt: list | None = None  # the lmdeploy:dllm_* lines of /metrics after the soak


def verdict(report: ArmReport, *, mem_tolerance: float = 0.01) -> dict:
    counts = {}
    for o in report.outcomes:
        counts[o.category] = counts.get(o.category, 0) + 1
    checks = {
        'no engine death': report.engine_deaths == 0,
        'no 5xx': counts.get('server_error', 0) == 0,
        'no dropped connection': counts.get('dropped', 0) == 0,
        'every bad request a 4xx naming the field': counts.get('unnamed_field', 0) == 0
        and not any(o.category == 'wrong_status' and o.kind == 'bad' for o in report.outcomes),
        'no mask token in any output': counts.get('mask_token', 0) == 0,
        'every other request well-formed': counts.get('malformed', 0) == 0
        and not any(o.category == 'wrong_status' and o.kind != 'bad' for o in report.outcomes),
        'healthy afterwards': report.health_after == 200,
        'greedy answers identical afterwards': bool(report.greedy_before) and report.greedy_before == report.greedy_after,
    }
    if report.gpu_mem_warm_mib is not None and report.gpu_mem_after_mib is not None:
        checks['GPU memory within 1% of warm-up'] = \
            abs(report.gpu_mem_after_mib - report.gpu_mem_warm_mib) <= mem_tolerance * report.gpu_mem_warm_mib
    else:
        checks['GPU memory within 1% of warm-up'] = False
    return dict(arm=report.arm, requests=len(report.outcomes), counts=counts, checks=checks,
                passed=all(checks.values()))


def side_by_side(verdicts: list[dict]) -> str:
    arms = [v['arm'] for v in verdicts]
    names = list(verdicts[0]['checks'])
    width = max(len(n) for n in names) + 2
    lines = ['check'.ljust(width) + ''.join(a.ljust(10) for a in arms)]
    lines.append('requests'.ljust(width) + ''.join(str(v['requests']).ljust(10) for v in verdicts))
    for name in names:
        lines.append(name.ljust(width) + ''.join(('pass' if v['checks'][name] else 'FAIL').ljust(10) for v in verdicts))
    categories = sorted({c for v in verdicts for c in v['counts']})
    for c in categories:
        lines.append(f'  {c}'.ljust(width) + ''.join(str(v['counts'].get(c, 0)).ljust(10) for v in verdicts))
    lines.append('overall'.ljust(width) + ''.join(('PASS' if v['passed'] else 'FAIL').ljust(10) for v in verdicts))
    return '\n'.join(lines)
