"""CPU tests of the serving soak check's logic (``checks/serving_soak``): the request mix, the
classification of answers (by hand, then on real upstream api_server answers over the fake backend of
``lmdeploy_focus_dev.testing.fake_serving``), the verdict and the side-by-side table."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(ROOT, 'checks')
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')
sys.path.insert(0, CHECKS)
from serving_soak import logic  # noqa: E402

sys.path.remove(CHECKS)

MIX = dict(model='m', block_length=32, mask_token=259, vocab_size=320, stop_token_ids=[101, 32],
           stop_strings=['e', ' '])


def test_mix_holds_every_kind_and_every_bad_request():
    specs = logic.build_mix(1000, seed=3, **MIX)
    assert len(specs) == 1000 and [s.index for s in specs] == list(range(1000))
    kinds = {s.kind for s in specs}
    assert kinds == set(logic.KINDS)
    bad = [s for s in specs if s.kind == 'bad']
    assert len(bad) >= 100 and {s.expect_field for s in bad} == {f for _, _, f in logic.BAD_REQUESTS}
    for s in specs:
        assert json.dumps(s.body)  # sendable
        if s.kind != 'bad' and 'max_tokens' in s.body:
            assert s.body['max_tokens'] % 32 != 0  # never a whole number of blocks
        if s.kind == 'stop_ids':
            assert s.body['stop_token_ids'][0] in (101, 32) and s.encode_prompt
        if s.kind == 'disconnect':
            assert s.stream and s.disconnect_after >= 1
    assert any(not s.greedy for s in specs) and any(s.greedy for s in specs)
    assert any(s.body.get('skip_special_tokens') is False for s in specs)
    assert any(s.body.get('input_ids') == [5, 259] for s in bad)  # the placeholders were filled
    assert logic.build_mix(1000, seed=3, **MIX)[7].body == specs[7].body  # deterministic


def test_mix_too_small_is_refused():
    with pytest.raises(ValueError):
        logic.build_mix(10, **MIX)


def spec(kind='completion', path='/v1/completions', stream=False, expect=None, **body):
    return logic.Spec(0, kind, path, dict(body), stream=stream, expect_field=expect)


def completion_body(text='abc', finish='length', tokens=3):
    return json.dumps(dict(choices=[dict(text=text, finish_reason=finish)], usage=dict(completion_tokens=tokens)))


def test_classify_by_hand():
    c = lambda s, **kw: logic.classify(s, mask_text='<|MASK|>', **kw).category  # noqa: E731
    assert c(spec(max_tokens=5), status=200, body=completion_body(), error=None) == 'ok'
    assert c(spec(max_tokens=2), status=200, body=completion_body(), error=None) == 'malformed'  # 3 > 2 tokens
    assert c(spec(), status=200, body=completion_body(finish=None), error=None) == 'malformed'
    assert c(spec(), status=200, body=completion_body(text='a<|MASK|>b'), error=None) == 'mask_token'
    assert c(spec(), status=500, body='boom', error=None) == 'server_error'
    assert c(spec(), status=None, body=None, error='RemoteProtocolError: closed') == 'dropped'
    assert c(spec(), status=200, body='not json', error=None) == 'malformed'
    bad = spec('bad', expect='top_p')
    named = json.dumps(dict(message='top_p: must be a number in (0, 1], got 7.0', param='top_p'))
    assert c(bad, status=400, body=named, error=None) == 'bad_ok'
    assert c(bad, status=400, body=json.dumps(dict(message='something', param=None)), error=None) == 'unnamed_field'
    assert c(bad, status=200, body=completion_body(), error=None) == 'wrong_status'
    assert c(bad, status=503, body='{}', error=None) == 'server_error'
    gen = spec('stop_ids', '/generate')
    gen_body = dict(text='x', output_ids=[5, 259], meta_info=dict(finish_reason=dict(type='stop'), completion_tokens=2))
    assert logic.classify(gen, status=200, body=json.dumps(gen_body), error=None, mask_text='',
                          mask_id=259).category == 'mask_token'
    streamed = spec(stream=True)
    sse = 'data: {"choices": [{"text": "a", "finish_reason": null}]}\n\n' \
          'data: {"choices": [{"text": "b", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    assert c(streamed, status=200, body=sse, error=None) == 'ok'
    assert c(streamed, status=200, body=sse.replace('data: [DONE]\n\n', ''), error=None) == 'malformed'
    assert c(streamed, status=200, body=sse.replace('"b"', '"b"}, "error": {"x": 1}, "y": [{"a": 1'), error=None) \
        == 'malformed'
    hang_up = logic.Spec(0, 'disconnect', '/v1/completions', {}, stream=True, disconnect_after=1)
    assert c(hang_up, status=200, body=None, error=None, disconnected=True) == 'disconnected'


def test_verdict_and_table():
    ok = logic.Outcome(0, 'completion', 'ok', 200)
    report = logic.ArmReport('stock', outcomes=[ok, logic.Outcome(1, 'bad', 'bad_ok', 400)], health_after=200,
                             gpu_mem_warm_mib=1000.0, gpu_mem_after_mib=1009.0, greedy_before=['a'],
                             greedy_after=['a'])
    v = logic.verdict(report)
    assert v['passed'] and v['counts'] == {'ok': 1, 'bad_ok': 1}
    leaky = logic.ArmReport('focus', outcomes=[ok, logic.Outcome(1, 'chat', 'server_error', 500)],
                            health_after=200, gpu_mem_warm_mib=1000.0, gpu_mem_after_mib=1011.0,
                            greedy_before=['a'], greedy_after=['b'], engine_deaths=1)
    w = logic.verdict(leaky)
    assert not w['passed']
    failed = {k for k, passed in w['checks'].items() if not passed}
    assert failed == {'no engine death', 'no 5xx', 'GPU memory within 1% of warm-up',
                      'greedy answers identical afterwards'}
    table = logic.side_by_side([v, w])
    assert 'stock' in table and 'focus' in table and 'FAIL' in table and table.splitlines()[-1].split()[-2:] == \
        ['PASS', 'FAIL']


def test_the_mix_against_the_real_api_server_over_a_fake_backend(monkeypatch):
    """Every bad request of the mix gets a 4xx naming its field from the real api_server (with the
    plugin's validation), every good one a well-formed answer; streaming, stop strings, /generate and
    skip_special_tokens included."""
    from fastapi.testclient import TestClient

    from lmdeploy_focus_dev.testing.fake_serving import build_app
    app = build_app(MODEL, monkeypatch)
    specs = logic.build_mix(len(logic.BAD_REQUESTS) + 3 * len(logic.KINDS), seed=1, bad_fraction=0, **MIX)
    outcomes = []
    with TestClient(app) as client:
        for s in specs:
            if s.encode_prompt is not None:
                s.body['input_ids'] = client.post('/v1/encode', json=dict(input=s.encode_prompt, add_bos=False)
                                                  ).json()['input_ids']
            if s.disconnect_after is not None:
                s.disconnect_after = None  # a TestClient cannot hang up mid-stream; read it whole
            r = client.post(s.path, json=s.body)
            outcomes.append(logic.classify(s, status=r.status_code, body=r.text, error=None, mask_text='<|MASK|>',
                                           mask_id=259))
    problems = [(o.kind, specs[o.index].path, specs[o.index].body, o.category, o.detail) for o in outcomes
                if not o.passed]
    assert not problems, problems
    assert sum(o.category == 'bad_ok' for o in outcomes) == len(logic.BAD_REQUESTS)
