"""Issue 15, item 1: a bad request is a 400 naming the field and the allowed range, never an engine
death. The rules one by one (``lmdeploy_focus.serving.validation``), then through upstream's real
api_server (``serve()``, router, ``AsyncEngine.preprocess``) over a fake backend
(``lmdeploy_focus_dev.testing.fake_serving``) with the committed tiny SDAR model's tokenizer, and
``pipeline()``'s error response."""
import os
from types import SimpleNamespace

import pytest

from lmdeploy_focus.serving.validation import (MAX_SEED, MAX_STOP_TOKEN_IDS, MAX_STOP_WORDS, FieldError, ModelLimits,
                                               check_generation_config, check_http_request, check_input_ids)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')
LIMITS = ModelLimits(vocab_size=320, session_len=100, mask_token=259)


def completion(**kw):
    base = dict(prompt='hi', n=1, logprobs=None, max_tokens=16, max_completion_tokens=None, temperature=None,
                top_p=None, top_k=None, min_p=None, repetition_penalty=None, seed=None, stop=None)
    return SimpleNamespace(**{**base, **kw})


def rejected(fn, *args, **kwargs) -> FieldError:
    with pytest.raises(FieldError) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.mark.parametrize('field,value,range_text', [
    ('top_p', 7, '(0, 1]'), ('top_p', 0, '(0, 1]'), ('top_p', -0.5, '(0, 1]'),
    ('top_k', -1, '>= 0'), ('temperature', -0.1, '[0, 2]'), ('temperature', 2.5, '[0, 2]'),
    ('min_p', 1.5, '[0, 1]'), ('repetition_penalty', 0, '> 0'), ('seed', -1, '[0, 2**63 - 1]'),
    ('max_tokens', 0, '>= 1'), ('max_tokens', -5, '>= 1'), ('max_completion_tokens', 0, '>= 1'),
    ('n', 2, 'n = 1'), ('n', 0, 'n = 1'), ('logprobs', 3, 'null or 0'), ('stop', ['a', ''], 'non-empty'),
    ('prompt', [], 'non-empty'), ('prompt', ['ok', 3], 'string'),
])
def test_completions_field_rules(field, value, range_text):
    error = rejected(check_http_request, completion(**{field: value}), endpoint='completions')
    assert error.param == field and error.message.startswith(f'{field}: ') and range_text in error.message
    assert error.status_code == 400
    request_error = error.to_request_error()
    assert request_error.status_code == 400 and request_error.param == field and request_error.message == error.message


def test_valid_requests_pass_every_endpoint():
    """Values at the edges of each allowed range pass (each rejected one past them, tests above)."""
    assert check_http_request(completion(top_p=1, top_k=0, temperature=0, min_p=0, seed=0, stop='x'),
                              endpoint='completions') is None
    chat = completion(n=128, top_logprobs=20, min_new_tokens=3, max_tokens=3)
    assert check_http_request(chat, endpoint='chat') is None
    gen = SimpleNamespace(max_tokens=0, logprob_start_len=0, top_logprobs_num=2, top_p=0.5)
    assert check_http_request(gen, endpoint='generate') is None  # input logprobs: max_tokens 0 is upstream's contract
    assert rejected(check_http_request, completion(n=129), endpoint='chat').param == 'n'
    assert rejected(check_http_request, SimpleNamespace(max_tokens=0, logprob_start_len=-1),
                    endpoint='generate').param == 'max_tokens'  # 0 only with input logprobs


@pytest.mark.parametrize('endpoint,request_fields,field', [
    ('chat', dict(n=129), 'n'), ('chat', dict(n=True), 'n'), ('chat', dict(top_logprobs=21), 'top_logprobs'),
    ('chat', dict(min_new_tokens=5, max_tokens=4), 'min_new_tokens'),
    ('generate', dict(top_logprobs_num=-1), 'top_logprobs_num'),
    ('generate', dict(top_logprobs_num=21), 'top_logprobs_num'),
    ('generate', dict(top_logprobs_num=10**6), 'top_logprobs_num'),
    ('generate', dict(max_tokens=0, logprob_start_len=-1), 'max_tokens'),
])
def test_chat_and_generate_rules(endpoint, request_fields, field):
    assert rejected(check_http_request, completion(**request_fields), endpoint=endpoint).param == field


def test_input_logprobs_refused_for_diffusion_models_only():
    gen = SimpleNamespace(max_tokens=0, logprob_start_len=0)
    check_http_request(gen, endpoint='generate', dllm=False)
    assert rejected(check_http_request, gen, endpoint='generate', dllm=True).param == 'logprob_start_len'


def test_input_ids_rules():
    decode = lambda ids: ''.join(' ' if i == 1 else 'x' for i in ids)  # noqa: E731
    check_input_ids([2, 3], LIMITS, max_new_tokens=98, decode=decode)
    assert 'empty' in rejected(check_input_ids, [], LIMITS).message
    assert 'whitespace' in rejected(check_input_ids, [1, 1], LIMITS, decode=decode).message
    assert 'decodes to no text' in rejected(check_input_ids, [2], LIMITS, decode=lambda ids: '').message
    assert '[0, 320)' in rejected(check_input_ids, [2, 320], LIMITS).message
    assert '[0, 320)' in rejected(check_input_ids, [-1], LIMITS).message
    assert 'mask token' in rejected(check_input_ids, [2, 259], LIMITS).message
    check_input_ids([259], ModelLimits(vocab_size=320, session_len=100))  # not a diffusion model: an ordinary id
    error = rejected(check_input_ids, [2, 3], LIMITS, max_new_tokens=99)
    assert error.param == 'max_tokens' and '[1, 98]' in error.message
    # a minimum above the answer's room (session 100, prompt 2): upstream dropped it with a log line
    check_input_ids([2, 3], LIMITS, min_new_tokens=98)
    error = rejected(check_input_ids, [2, 3], LIMITS, min_new_tokens=99)
    assert error.param == 'min_new_tokens' and '[0, 98]' in error.message


def test_a_min_new_tokens_of_the_whole_session_is_refused():
    """Without max_tokens the budget is what the session leaves after the prompt: a minimum of the whole session can
    never be met (upstream's engine drops it with a log line only). The request's own field, never a server default
    (those merge in after this check)."""
    chat = lambda **kw: completion(max_tokens=None, **kw)  # noqa: E731
    check_http_request(chat(min_new_tokens=99), endpoint='chat', session_len=100)
    check_http_request(chat(min_new_tokens=10**6), endpoint='chat')  # no session length known: upstream's rule
    error = rejected(check_http_request, chat(min_new_tokens=100), endpoint='chat', session_len=100)
    assert error.param == 'min_new_tokens' and 'session length (100)' in error.message


def test_logprobs_from_an_engine_that_computes_none_are_refused():
    """``pipeline()`` on an engine without ``logprobs_mode`` returned no logprobs, silently (upstream's api_server
    refuses the same request); unknown (not a PyTorch engine config) and engines with a mode pass."""
    from dataclasses import replace

    from lmdeploy import GenerationConfig
    for logprobs in (None, True):
        check_generation_config(GenerationConfig(logprobs=3), replace(LIMITS, logprobs=logprobs))
    check_generation_config(GenerationConfig(logprobs=0), replace(LIMITS, logprobs=False))  # none asked
    error = rejected(check_generation_config, GenerationConfig(logprobs=3), replace(LIMITS, logprobs=False))
    assert error.param == 'logprobs' and "logprobs_mode='raw_logprobs'" in error.message


def test_a_min_new_tokens_above_max_new_tokens_is_refused():
    """pipeline() users set both on a GenerationConfig: upstream dropped the minimum with a log line (found by a
    bug-hunting review; the HTTP layer already compared min_new_tokens with max_tokens)."""
    from lmdeploy import GenerationConfig
    check_generation_config(GenerationConfig(max_new_tokens=8, min_new_tokens=8), LIMITS)
    check_generation_config(GenerationConfig(max_new_tokens=None, min_new_tokens=64), LIMITS)  # the session decides
    error = rejected(check_generation_config, GenerationConfig(max_new_tokens=8, min_new_tokens=64), LIMITS)
    assert error.param == 'min_new_tokens' and 'max_new_tokens (8), got 64' in error.message


def test_the_engine_side_check_takes_what_upstream_builds_from_a_request_at_the_caps():
    """The engine guard checks the SamplingParam upstream builds after the request check: with ignore_eos upstream
    moves the stop ids into the bad ones (and adds the model's eos ids), so a request at the boundary's caps reaches
    the engine with longer lists. They are padded there, not a failure: no count cap on that side (a review found
    one refusing such requests)."""
    from lmdeploy import GenerationConfig
    from lmdeploy.pytorch.messages import SamplingParam

    from lmdeploy_focus.serving.validation import check_sampling_param
    config = GenerationConfig(stop_token_ids=list(range(MAX_STOP_TOKEN_IDS)), bad_token_ids=list(range(260, 320)),
                              ignore_eos=True, max_new_tokens=8)
    check_generation_config(config, LIMITS)
    param = SamplingParam.from_gen_config(config)
    assert len(param.bad_words) > MAX_STOP_TOKEN_IDS
    check_sampling_param(param, LIMITS)
    param.bad_words.append(LIMITS.vocab_size)  # what the sampler cannot take is still refused
    assert rejected(check_sampling_param, param, LIMITS).param == 'bad_words'


def test_stop_lists_are_capped():
    """One request's stop table is padded into every neighbour's and repeated per block row; each stop word costs a
    vocabulary scan on the server's loop: both are bounded per request, the cap itself allowed."""
    from lmdeploy import GenerationConfig
    one_token = lambda word: [5]  # noqa: E731
    words = [chr(ord('a') + i) for i in range(MAX_STOP_WORDS + 1)]
    check_http_request(completion(stop=words[:-1]), endpoint='completions')
    assert rejected(check_http_request, completion(stop=words), endpoint='chat').param == 'stop'
    ids = list(range(MAX_STOP_TOKEN_IDS + 1))
    limits = ModelLimits(vocab_size=MAX_STOP_TOKEN_IDS + 10, session_len=100)
    check_generation_config(GenerationConfig(stop_words=words[:-1], stop_token_ids=ids[:-1]), limits, encode=one_token)
    for field, value in (('stop_token_ids', ids), ('bad_token_ids', ids), ('stop_words', words), ('bad_words', words)):
        config = GenerationConfig()
        setattr(config, field, value)
        error = rejected(check_generation_config, config, limits, encode=one_token)
        assert error.param == field and 'at most' in error.message, field


def test_chat_fanout_seeds_stay_in_range():
    """Upstream's fan-out samples choice i with seed + i: the last one must still be a valid seed."""
    chat = lambda seed, n: completion(seed=seed, n=n)  # noqa: E731
    check_http_request(chat(MAX_SEED - 1, 2), endpoint='chat')
    check_http_request(chat(MAX_SEED, 1), endpoint='chat')
    error = rejected(check_http_request, chat(MAX_SEED, 2), endpoint='chat')
    assert error.param == 'seed' and 'n = 2' in error.message


def test_generation_config_rules():
    from lmdeploy import GenerationConfig
    one_token = lambda word: [5] if len(word) == 1 else [5] * len(word)  # noqa: E731
    check_generation_config(GenerationConfig(stop_words=['a'], stop_token_ids=[3]), LIMITS, encode=one_token)
    cases = [
        (dict(top_p=7.0), 'top_p'), (dict(top_k=-1), 'top_k'), (dict(temperature=-1.0), 'temperature'),
        (dict(max_new_tokens=0), 'max_new_tokens'), (dict(n=2), 'n'), (dict(random_seed=-3), 'random_seed'),
        (dict(stop_token_ids=[400]), 'stop_token_ids'), (dict(stop_token_ids=[259]), 'stop_token_ids'),
        (dict(bad_token_ids=[-2]), 'bad_token_ids'), (dict(stop_words=['ab']), 'stop_words'),
        (dict(logprob_start_len=0, max_new_tokens=0), 'logprob_start_len'),
        (dict(output_logits='all'), 'output_logits'), (dict(return_ppl=True), 'return_ppl'),  # a diffusion model
        (dict(output_last_hidden_state='all'), 'output_last_hidden_state'),
        (dict(return_routed_experts=True), 'return_routed_experts'),  # answered null (a bug hunt, 2026-12-07)
        (dict(top_k=321), 'top_k'), (dict(top_k=10**6), 'top_k'),  # above the vocabulary (320)
        (dict(logprobs=21), 'logprobs'), (dict(logprobs=10**5), 'logprobs'),
        (dict(response_format={'type': 'json_object'}), 'response_format'),
        # past upstream's n-gram window (1024): a shape error inside the batch's sampling step
        (dict(repetition_ngram_size=1025, repetition_ngram_threshold=1), 'repetition_ngram_size'),
        (dict(repetition_ngram_size=4, repetition_ngram_threshold=10**20), 'repetition_ngram_threshold'),
    ]
    for kwargs, field in cases:
        config = GenerationConfig(logprobs=0)
        for key, value in kwargs.items():  # past GenerationConfig's own asserts, as a mutated config would be
            setattr(config, key, value)
        assert rejected(check_generation_config, config, LIMITS, encode=one_token).param == field, kwargs
    # the edges stay allowed: top_k = the vocabulary, 20 logprobs; guided output for autoregressive models
    check_generation_config(GenerationConfig(top_k=320, logprobs=20), LIMITS, encode=one_token)
    check_generation_config(GenerationConfig(repetition_ngram_size=1024, repetition_ngram_threshold=2**31 - 1), LIMITS)
    check_generation_config(GenerationConfig(response_format={'type': 'json_object'}),
                            ModelLimits(vocab_size=320, session_len=100))
    # a multi-token bad word points at bad_token_ids, a stop word at stop_token_ids
    config = GenerationConfig(logprobs=0)
    config.bad_words = ['ab']
    assert 'use bad_token_ids' in rejected(check_generation_config, config, LIMITS, encode=one_token).message
    config = GenerationConfig(stop_words=['ab'])
    assert 'use stop_token_ids' in rejected(check_generation_config, config, LIMITS, encode=one_token).message
    # a word that is the mask token is refused as its id is in stop_token_ids / bad_token_ids
    as_mask = lambda word: [259] if word == '<|MASK|>' else [5]  # noqa: E731
    for field in ('stop_words', 'bad_words'):
        config = GenerationConfig(logprobs=0)
        setattr(config, field, ['a', '<|MASK|>'])
        error = rejected(check_generation_config, config, LIMITS, encode=as_mask)
        assert error.param == field and 'mask token' in error.message and '<|MASK|>' in error.message, field
        check_generation_config(config, ModelLimits(vocab_size=320, session_len=100), encode=as_mask)  # no mask token


# ---- through upstream's api_server --------------------------------------------------------------------


@pytest.fixture(scope='module')
def server():
    from fastapi.testclient import TestClient

    from lmdeploy_focus_dev.testing.fake_serving import build_app
    mp = pytest.MonkeyPatch()
    try:
        app = build_app(MODEL, mp)
        with TestClient(app) as client:
            yield client, app
    finally:
        mp.undo()


BAD = [
    ('/v1/completions', dict(prompt=''), 'prompt'),
    ('/v1/completions', dict(prompt='   \n '), 'prompt'),
    ('/v1/completions', dict(prompt='hi', top_p=7), 'top_p'),
    ('/v1/completions', dict(prompt='hi', top_k=-1), 'top_k'),
    ('/v1/completions', dict(prompt='hi', temperature=-1), 'temperature'),
    ('/v1/completions', dict(prompt='hi', max_tokens=0), 'max_tokens'),
    ('/v1/completions', dict(prompt='hi', max_tokens=5000), 'max_tokens'),
    ('/v1/completions', dict(prompt='hi', n=3), 'n'),
    ('/v1/completions', dict(prompt='hi', logprobs=2), 'logprobs'),
    ('/v1/completions', dict(prompt='hi', stop=['a long stop string']), 'stop_words'),
    ('/v1/completions', dict(prompt='hi', stream=True, top_p=0), 'top_p'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], top_p=7), 'top_p'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], max_tokens=-1), 'max_tokens'),
    ('/v1/chat/completions', dict(messages=[], input_ids=[5, 259]), 'prompt'),
    ('/generate', dict(input_ids=[5, 6, 400], max_tokens=4), 'prompt'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=4, stop_token_ids=[259]), 'stop_token_ids'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=0, logprob_start_len=0, return_logprob=True),
     'logprob_start_len'),
    # each of these killed the engine loop inside the step (torch.topk with k above the vocabulary)
    ('/v1/completions', dict(prompt='hi', top_k=10**6), 'top_k'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], top_k=321), 'top_k'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=4, return_logprob=True, top_logprobs_num=10**6),
     'top_logprobs_num'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}],
                                  response_format={'type': 'json_object'}), 'response_format'),
    # an n-gram past upstream's window: a shape error in the batch's sampling step once a neighbour differs
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], repetition_ngram_size=1025,
                                  repetition_ngram_threshold=1), 'repetition_ngram_size'),
    ('/generate', dict(input_ids=[5, 6], max_tokens=4, repetition_ngram_size=3, repetition_ngram_threshold=10**20),
     'repetition_ngram_threshold'),
    # per entry and block row an indexing op on the engine's loop: a huge map stalls the whole batch
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}],
                                  logit_bias={str(i): 1.0 for i in range(301)}), 'logit_bias'),
    # one request's stop table lands in every neighbour's, per block row; each stop word scans the vocabulary
    ('/generate', dict(input_ids=[5, 6], max_tokens=4, stop_token_ids=list(range(MAX_STOP_TOKEN_IDS + 1))),
     'stop_token_ids'),
    ('/v1/completions', dict(prompt='hi', stop=['x'] * (MAX_STOP_WORDS + 1)), 'stop'),
    # a minimum of the whole session can never be met (upstream drops it with a log line)
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], min_new_tokens=10**6), 'min_new_tokens'),
    # malformed chat messages: upstream answered "'int' object is not iterable" / 'Request preprocessing failed.'
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 5}], max_tokens=2), 'messages'),
    ('/v1/chat/completions', dict(messages=[{'content': 'hi'}], max_tokens=2), 'messages'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': ['hi']}], max_tokens=2), 'messages'),
    # disaggregation's raw fields on a Hybrid server: the session and its KV cache kept for good / a request waiting
    # for a migration that never runs
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], preserve_cache=True), 'preserve_cache'),
    ('/v1/completions', dict(prompt='hi', max_tokens=2, preserve_cache=True), 'preserve_cache'),
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], max_tokens=2,
                                  migration_request={'protocol': 1, 'remote_engine_id': 'x', 'remote_session_id': 1,
                                                     'remote_token_id': 5, 'remote_block_ids': [0]}),
     'migration_request'),
]


@pytest.mark.parametrize('path,body,field', BAD, ids=[f'{p}:{f}' for p, _, f in BAD])
def test_bad_requests_are_400_naming_the_field(server, path, body, field):
    client, _ = server
    response = client.post(path, json={'model': 'm', **body})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error['param'] == field and error['message'].startswith(f'{field}: '), error
    assert client.get('/health').json()['status'] == 'healthy'


@pytest.mark.parametrize('path,body,headers', [
    ('/v1/messages', dict(max_tokens=4, messages=[{'role': 'user', 'content': 'hi'}]), {'anthropic-version': '2023-06-01'}),
    ('/v1/responses', dict(input='hi', max_output_tokens=4), {}),
])
def test_endpoints_building_their_config_through_chat_runner_answer_400(server, path, body, headers):
    """Patch 9c: upstream's own checks on these endpoints allow ``top_p`` 0, which ``GenerationConfig`` refuses
    inside ``ChatRunner.prepare``, where only ``RequestError`` is caught (it was a 500)."""
    client, _ = server
    response = client.post(path, json={'model': 'm', 'top_p': 0, **body}, headers=headers)
    assert response.status_code == 400, response.text
    assert 'top_p: must be a number in (0, 1]' in response.text
    assert client.post(path, json={'model': 'm', 'top_p': 0.5, **body}, headers=headers).status_code == 200
    assert client.get('/health').json()['status'] == 'healthy'


@pytest.mark.parametrize('path,body,headers,name', [
    ('/v1/messages', dict(max_tokens=4, messages=[{'role': 'user', 'content': 'hi'}]), {'anthropic-version': '2023-06-01'},
     'stop_sequences'),
    ('/v1/responses', dict(input='hi', max_output_tokens=4), {}, 'stop'),
])
def test_too_many_stop_strings_on_the_other_endpoints_name_the_clients_field(server, path, body, headers, name):
    """/v1/messages and /v1/responses reach only the engine-side check, which sees ``stop_words``: the message
    must also name the field the client sent."""
    client, _ = server
    stops = [chr(ord('a') + i) for i in range(17)]
    response = client.post(path, json={'model': 'm', name: stops, **body}, headers=headers)
    assert response.status_code == 400, response.text
    assert f'`{name}`' in response.text and 'at most 16 strings, got 17' in response.text
    assert client.post(path, json={'model': 'm', name: stops[:16], **body}, headers=headers).status_code == 200


def test_free_cache_on_a_hybrid_server_is_refused_and_ends_no_session(server, monkeypatch):
    """``/distserve/free_cache`` is registered on every api_server; on a Hybrid engine it ended any session by its
    small integer id, a running request included (found by a bug-hunting review)."""
    from lmdeploy_focus_dev.testing import fake_serving
    ended = []
    monkeypatch.setattr(fake_serving.FakeEngine, 'end_session', lambda self, sid: ended.append(sid) or True,
                        raising=False)
    client, _ = server
    response = client.post('/distserve/free_cache', json={'remote_engine_id': 'x', 'remote_session_id': 0})
    assert response.status_code == 400, response.text
    assert 'remote_session_id: /distserve/free_cache is only for a prefill/decode-disaggregated' in response.text
    assert ended == [] and client.get('/health').json()['status'] == 'healthy'


def test_free_cache_on_a_disaggregated_engine_frees_as_upstream():
    from types import SimpleNamespace

    from lmdeploy.pytorch.disagg.config import EngineRole
    from lmdeploy.serve.core.async_engine import AsyncEngine
    ended = []
    fake = SimpleNamespace(backend_config=SimpleNamespace(role=EngineRole.Prefill),
                           engine=SimpleNamespace(end_session=lambda sid: ended.append(sid) or True))
    AsyncEngine.free_cache(fake, 7)
    assert ended == [7]


def test_the_soak_checks_bad_requests_are_400s_naming_their_field(server):
    """The GPU soak (checks/serving_soak) expects each of its bad requests to be a 400 naming a field: true
    here first, on upstream's api_server over the fake backend with the tiny model's vocabulary and mask."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'checks'))
    try:
        from serving_soak import logic
    finally:
        sys.path.remove(os.path.join(ROOT, 'checks'))
    client, _ = server
    for path, fields, field in logic.BAD_REQUESTS:
        body = logic._fill(dict(fields), mask=259, vocab=320)
        response = client.post(path, json={'model': 'm', **body})
        assert response.status_code == 400, (path, body, response.text)
        error = response.json()
        message = error.get('message', '')
        # ours: param and message prefix; upstream's own rules name it in their sentence, with no param
        assert (error.get('param') == field or message.startswith(f'{field}: ')
                or (error.get('param') is None and f' {field} ' in message)), (path, body, error)
    assert client.get('/health').json()['status'] == 'healthy'


def test_a_logit_bias_of_the_cap_passes_and_one_more_entry_does_not():
    # the tiny model's vocabulary (256) is below the cap, so the edge is checked on the rule itself
    chat = lambda n: SimpleNamespace(n=1, top_logprobs=None, logit_bias={str(i): 1.0 for i in range(n)})  # noqa: E731
    check_http_request(chat(300), endpoint='chat')
    assert rejected(check_http_request, chat(301), endpoint='chat').param == 'logit_bias'


def test_pooling_on_a_diffusion_model_is_a_400_naming_the_route(server):
    """/pooling asks for every position's logits, which the engine refuses for a diffusion model; upstream's route
    turned that refusal into a bare 500 naming nothing."""
    client, _ = server
    response = client.post('/pooling', json={'model': 'm', 'input': [5, 6, 7]})
    assert response.status_code == 400, response.text
    error = response.json()
    assert error['param'] == 'pooling' and 'not available for diffusion models' in error['message'], error
    assert client.get('/health').json()['status'] == 'healthy'


def test_good_requests_still_served(server):
    client, app = server
    r = client.post('/v1/completions', json={'model': 'm', 'prompt': 'hello', 'max_tokens': 3})
    assert r.status_code == 200 and r.json()['choices'][0]['text'] == 'oll'  # the fake answers the prompt reversed
    r = client.post('/v1/completions', json={'model': 'm', 'prompt': 'hello', 'max_tokens': 3, 'stop': ['l']})
    assert r.status_code == 200
    r = client.post('/v1/chat/completions', json={'model': 'm', 'messages': [{'role': 'user', 'content': ''}],
                                                  'max_tokens': 2})
    assert r.status_code == 200  # empty content, but the chat template is not empty
    r = client.post('/generate', json={'input_ids': [5, 6, 7], 'max_tokens': 2, 'stop_token_ids': [3]})
    assert r.status_code == 200
    # /generate's schema allows one stop string, as chat's and completions' do (upstream passed it on unwrapped)
    r = client.post('/generate', json={'input_ids': [5, 6, 7], 'max_tokens': 2, 'stop': 'l'})
    assert r.status_code == 200, r.text


def test_patched_entry_points_are_the_ones_the_handlers_use():
    import importlib
    for name in ('lmdeploy.serve.openai.endpoints.completions', 'lmdeploy.serve.openai.endpoints.generate',
                 'lmdeploy.serve.openai.chat_completions.serving'):
        module = importlib.import_module(name)
        assert hasattr(module.validate_request, '__lmdeploy_focus_upstream__'), name
        assert hasattr(module.create_request_error_response, '__lmdeploy_focus_upstream__'), name


def test_pipeline_path_gets_a_request_error_not_a_dead_engine():
    """What ``pipeline()`` runs per request (``AsyncEngine.preprocess`` then ``generate``; a
    ``RequestError`` becomes a ``Response`` with ``finish_reason='error'`` and the message), over the real
    ``AsyncEngine`` + fake backend: bad requests are 400-class errors naming the field, and leave no
    session behind; the next request is served."""
    import asyncio

    from lmdeploy import GenerationConfig
    from lmdeploy.serve.core.exceptions import RequestError

    from lmdeploy_focus_dev.testing.fake_serving import async_engine_class
    from lmdeploy import PytorchEngineConfig
    engine = async_engine_class()(MODEL, backend='pytorch',
                                  backend_config=PytorchEngineConfig(max_batch_size=2, enable_metrics=False))

    async def run(prompt, gen_config):
        request = await engine.preprocess(prompt, engine.session_mgr.get(), gen_config=gen_config,
                                          do_preprocess=False)
        return [out.response async for out in engine.generate(request)]

    async def main():
        engine.session_mgr.attach_event_loop(asyncio.get_running_loop())
        bad_top_p = GenerationConfig()
        bad_top_p.top_p = 3.0  # GenerationConfig asserts at construction; a mutated one reaches preprocess
        for prompt, gen_config, field in [('', None, 'prompt'), ('hi', bad_top_p, 'top_p'),
                                          ('hi', GenerationConfig(max_new_tokens=10**6), 'max_tokens'),
                                          ('hi', GenerationConfig(logprobs=2), 'logprobs')]:  # no logprobs_mode
            with pytest.raises(RequestError) as info:
                await run(prompt, gen_config)
            assert info.value.status_code == 400 and info.value.message.startswith(field + ':')
        assert ''.join(await run('abc', GenerationConfig(max_new_tokens=2))) == 'cb'
        assert len(engine.session_mgr.sessions) == 0  # the rejected requests left no session behind

    asyncio.run(main())


@pytest.mark.parametrize('path,body', [
    ('/v1/chat/completions', dict(messages=[{'role': 'user', 'content': 'hi'}], max_tokens=4)),
    ('/v1/completions', dict(prompt='hi', max_tokens=4)),
    ('/generate', dict(input_ids=[5, 6, 7], max_tokens=4)),
])
def test_a_client_session_id_is_one_request_at_a_time_and_never_an_internal_id(path, body, monkeypatch):
    """Upstream's validators looked a client's session_id up among the internal ids: a second request on a client
    id in progress passed and its session mapping raised (a 500), and a free client id equal to another request's
    internal id was refused as occupied. Found by a bug-hunting review. Now: the second is a 400 naming
    ``session_id``, the free one is served, the first request is untouched."""
    import asyncio
    import threading
    import time

    from fastapi.testclient import TestClient
    from lmdeploy.messages import EngineOutput, ResponseType

    from lmdeploy_focus_dev.testing import fake_serving

    streams, first_streaming, release_first = [], threading.Event(), threading.Event()

    async def held_stream(self, session_id, input_ids, gen_config=None, **kwargs):
        # the first request's stream stays open until the test releases it (at most 60 s); the others finish at once
        streams.append(session_id)
        if len(streams) == 1:
            first_streaming.set()
            deadline = time.monotonic() + 60
            while not release_first.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        yield EngineOutput(ResponseType.FINISH, list(reversed(input_ids))[:gen_config.max_new_tokens])

    monkeypatch.setattr(fake_serving.FakeInstance, 'async_stream_infer', held_stream)
    app = fake_serving.build_app(MODEL, monkeypatch)
    with TestClient(app, raise_server_exceptions=False) as client:
        first = {}
        runner = threading.Thread(target=lambda: first.setdefault('r', client.post(
            path, json={'model': 'm', 'session_id': 42, **body})))
        runner.start()
        try:
            assert first_streaming.wait(60), 'the first request never reached the engine'
            in_flight = fake_serving_sessions(app)
            assert len(in_flight) == 1, in_flight  # the first request's internal session
            second = client.post(path, json={'model': 'm', 'session_id': 42, **body})
            # completions with a list of prompts: upstream gives each a session of its own and uses no client id
            listed = None
            if path == '/v1/completions':
                listed = client.post(path, json={'model': 'm', 'session_id': 42, **dict(body, prompt=['hi', 'yo'])})
            # a client id equal to the internal id of the request in flight (upstream refused it as occupied)
            internal = in_flight[0]
            assert fake_serving_sessions(app)[:1] == [internal] and 'r' not in first  # still in flight
            free = client.post(path, json={'model': 'm', 'session_id': internal, **body})
        finally:
            release_first.set()
            runner.join()
    assert second.status_code == 400, second.text
    assert second.json()['param'] == 'session_id' and 'in progress' in second.json()['message']
    assert free.status_code == 200, free.text
    assert listed is None or listed.status_code == 200, listed.text
    assert first['r'].status_code == 200


def fake_serving_sessions(app):
    """The internal session ids in flight on the app's engine."""
    from lmdeploy_focus.serving.liveness import LIVENESS
    return list(LIVENESS.async_engine.session_mgr.sessions)


def test_a_client_session_id_taken_between_validation_and_mapping_is_a_409():
    """Patch 12: a request whose client id was mapped by another after its validation (an await in between, as in
    the chat path) meets the mapping's ValueError: a 409 RequestError the endpoints answer, not a 500."""
    from types import SimpleNamespace

    from lmdeploy.serve.core.exceptions import RequestError
    from lmdeploy.serve.managers.session_manager import SessionManager
    from lmdeploy.serve.openai.api_server import ServerContext
    manager = SessionManager()
    context = object.__new__(ServerContext)
    context.async_engine = SimpleNamespace(session_mgr=manager, epoch=0)
    ServerContext.create_session(context, 42)
    with pytest.raises(RequestError) as info:
        ServerContext.create_session(context, 42)
    assert info.value.status_code == 409 and info.value.message.startswith('session_id: ')
    assert ServerContext.create_session(context, 43).session_id != ServerContext.create_session(context, None).session_id


def test_get_ppl_and_get_logits_of_a_diffusion_model_say_why_they_are_refused():
    """``pipeline.get_ppl`` skips ``preprocess``: the engine refused it and upstream raised ``failed to compute
    ce_loss``. It names why now (found by a review)."""
    import asyncio

    from lmdeploy import PytorchEngineConfig

    from lmdeploy_focus_dev.testing.fake_serving import async_engine_class
    engine = async_engine_class()(MODEL, backend='pytorch',
                                  backend_config=PytorchEngineConfig(max_batch_size=2, enable_metrics=False))
    with pytest.raises(ValueError, match='diffusion model does not define'):
        asyncio.run(engine.async_get_ppl([5, 6, 7]))
    with pytest.raises(ValueError, match='masked positions of its block only'):  # pipeline.get_logits
        asyncio.run(engine.async_get_logits([[5, 6, 7]]))


def test_a_busy_client_session_id_is_refused_unless_upstream_ignores_it():
    from lmdeploy_focus.serving.user_sessions import check_session_free
    manager = SimpleNamespace(user_session_id_map={42: 0})
    check_session_free(SimpleNamespace(session_id=-1), manager)
    check_session_free(SimpleNamespace(session_id=41), manager)
    check_session_free(SimpleNamespace(session_id=42, prompt=['a', 'b']), manager)  # completions: one session each
    assert rejected(check_session_free, SimpleNamespace(session_id=42, prompt='a'), manager).param == 'session_id'


@pytest.mark.parametrize('temperature', [1e-40, 5e-4])
def test_a_diffusion_request_with_a_tiny_temperature_is_refused(temperature):
    """Every confidence ~1 (a dynamic block decodes at once) and fp16 overflow; 0 is greedy. Autoregressive
    requests keep upstream's range."""
    error = rejected(check_http_request, completion(temperature=temperature), endpoint='completions', dllm=True)
    assert error.param == 'temperature' and '0 (greedy) or at least 0.001' in error.message
    check_http_request(completion(temperature=temperature), endpoint='completions')
    for ok in (0, 1e-3, 0.7):
        check_http_request(completion(temperature=ok), endpoint='completions', dllm=True)


def test_tool_choice_required_is_refused_by_its_own_name_on_a_diffusion_model():
    """The tool parser turns tool_choice 'required' into guided output: the client was told about a
    response_format it never sent (a bug hunt, 2026-12-07). Named functions and 'auto' stay allowed."""
    error = rejected(check_http_request, completion(tool_choice='required'), endpoint='chat', dllm=True)
    assert error.param == 'tool_choice' and "allowed: 'auto', 'none' or a named function" in error.message
    check_http_request(completion(tool_choice='required'), endpoint='chat')  # autoregressive: upstream's
    for ok in ('auto', 'none', {'type': 'function', 'function': {'name': 'f'}}):
        check_http_request(completion(tool_choice=ok), endpoint='chat', dllm=True)


def test_chat_content_parts_and_template_flags_upstream_would_mishandle_are_refused():
    """A content part of another type (input_audio, file) was dropped silently, and chat_template_kwargs
    continue_final_message cut the final assistant message's last 11 characters (a bug hunt, 2026-12-07)."""
    text = {'type': 'text', 'text': 'hi'}
    for part in ({'type': 'input_audio', 'input_audio': {}}, {'type': 'file', 'file': {}}, {'text': 'no type'}):
        error = rejected(check_http_request, completion(messages=[{'role': 'user', 'content': [text, part]}]),
                         endpoint='chat')
        assert error.param == 'messages' and 'content part 1 has type' in error.message and "image_url" in error.message
    check_http_request(completion(messages=[{'role': 'user', 'content': [text, {'type': 'image_url'}]}]),
                       endpoint='chat')  # a multimodal part: upstream's own rule for the model decides
    for key in ('continue_final_message', 'add_generation_prompt'):
        error = rejected(check_http_request, completion(chat_template_kwargs={key: True}), endpoint='chat')
        assert error.param == 'chat_template_kwargs' and key in error.message
    check_http_request(completion(chat_template_kwargs={'enable_thinking': False}), endpoint='chat')


def test_the_fast_token_check_agrees_with_the_per_id_rule_on_random_lists():
    """``_check_tokens`` answers a list of plain ints with C-speed passes: it must refuse exactly what the per-id rule
    refuses, with the same message (the first bad id's)."""
    import random

    import numpy as np
    from lmdeploy_focus.serving.validation import _check_token, _check_tokens
    rng = random.Random()
    odd = [-1, 320, 10**9, 259, True, 2.0, np.int64(5), np.int64(259), None]
    for limits in (LIMITS, ModelLimits(vocab_size=None, session_len=100, mask_token=259),
                   ModelLimits(vocab_size=320, session_len=100)):
        for _ in range(300):
            tokens = [rng.randrange(0, 320) for _ in range(rng.randint(0, 12))]
            for _ in range(rng.choice([0, 0, 1, 2])):
                tokens.insert(rng.randint(0, len(tokens)), rng.choice(odd))
            expected = None
            for token in tokens:
                try:
                    _check_token('prompt', token, limits, what='token id')
                except FieldError as e:
                    expected = str(e)
                    break
            try:
                _check_tokens('prompt', tokens, limits)
                got = None
            except FieldError as e:
                got = str(e)
            assert got == expected, tokens


def test_a_long_prompt_is_decoded_whole_only_when_its_head_shows_no_text():
    calls = []

    def decode(ids):
        calls.append(len(ids))
        return ''.join(' ' if i == 1 else ('' if i == 0 else 'x') for i in ids)

    long = 1000
    check_input_ids([2] + [1] * (long - 1), ModelLimits(vocab_size=320, session_len=10**4), decode=decode)
    assert calls == [64]  # visible text in the first ids: enough
    calls.clear()
    check_input_ids([1] * (long - 1) + [2], ModelLimits(vocab_size=320, session_len=10**4), decode=decode)
    assert calls == [64, long]  # text only at the end: found by the whole decode
    calls.clear()
    assert 'whitespace' in rejected(check_input_ids, [1] * long, ModelLimits(vocab_size=320, session_len=10**4),
                                    decode=decode).message
    assert 'decodes to no text' in rejected(check_input_ids, [0] * long, ModelLimits(vocab_size=320,
                                                                                     session_len=10**4),
                                            decode=decode).message


def test_a_whitespace_prompt_of_multi_byte_characters_is_refused_with_a_real_tokenizer():
    """The head decode may cut a character: its U+FFFD is no text (U+3000 x 100, 300 byte ids, was accepted)."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), 'models', 'tiny-sdar-5m-b32'))
    limits = ModelLimits(vocab_size=len(tokenizer), session_len=10**4)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    for space in ('\u3000', '\u2003', '\xa0', ' '):
        ids = tokenizer.encode(space * 100, add_special_tokens=False)
        assert len(ids) > 64
        assert 'whitespace' in rejected(check_input_ids, ids, limits, decode=decode).message, repr(space)
    check_input_ids(tokenizer.encode('\u3000' * 100 + 'x', add_special_tokens=False), limits, decode=decode)
