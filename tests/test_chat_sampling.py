"""Issue 15 item 1: bad sampling values from ``lmdeploy chat`` flags and from ``GenerationConfig`` end in one
clear error naming the field and its range (the rules of serving/validation.py), never an
``AssertionError`` or a dead engine."""
import json

import pytest

from conftest import run_python
from test_cli import _one_line_error, lmdeploy_cli

# (flags, the error's fragment): one per rule
BAD_FLAGS = [
    (['--top-p', '7'], 'argument --top-p: must be a number in (0, 1], got 7.0'),
    (['--top-p', '0'], 'argument --top-p: must be a number in (0, 1], got 0.0'),
    (['--temperature', '-0.5'], 'argument --temperature: must be a number in [0, 2], got -0.5'),
    (['--top-k', '-1'], 'argument --top-k: must be an integer >= 0 (0: no top-k), got -1'),
    (['--top-k', '2.5'], "argument --top-k: must be an integer >= 0 (0: no top-k), got '2.5'"),
    (['--repetition-penalty', '0'], 'argument --repetition-penalty: must be a number > 0 (1.0: no penalty), got 0.0'),
    (['--max-new-tokens', '0'], 'argument --max-new-tokens: must be an integer >= 1, got 0'),
    (['--max-new-tokens', '-3'], 'argument --max-new-tokens: must be an integer >= 1, got -3'),
    (['--top-p', 'high'], "argument --top-p: must be a number in (0, 1], got 'high'"),
]


@pytest.mark.parametrize('flags, fragment', BAD_FLAGS)
def test_a_bad_sampling_flag_is_one_line_naming_flag_and_range(sdar_dir, flags, fragment):
    # before: upstream's chat had no such flags ('unrecognized arguments'), and GenerationConfig asserted
    out = lmdeploy_cli('chat', sdar_dir('SDAR-tiny-b32'), '--backend', 'pytorch', *flags)
    assert out.returncode == 2 and 'usage:' not in out.stderr
    _one_line_error(out, 'lmdeploy chat', fragment)


# The real entry point up to the session's GenerationConfig (no engine: build_pipe is a stub).
GEN_PROBE = '''
import contextlib, dataclasses, json, sys
import lmdeploy_focus.cli.preflight as preflight
preflight.cuda_problem = lambda device: None
import lmdeploy.cli.chat as chat
chat.build_pipe = lambda *args, **kwargs: contextlib.nullcontext()
upstream = chat.build_gen_config
def build_gen_config(**kwargs):
    cfg = upstream(**kwargs)
    from lmdeploy_focus.serving import answer_budget
    print('PROBE' + json.dumps({**{k: getattr(cfg, k) for k in
          ('temperature', 'top_p', 'top_k', 'repetition_penalty', 'max_new_tokens')},
          'clip': answer_budget._clip_answers}))
    raise SystemExit(0)
chat.build_gen_config = build_gen_config
from lmdeploy.cli.entrypoint import run
sys.argv = ['lmdeploy'] + sys.argv[1:]
run()
'''


def _gen_config(sdar_dir, *flags):
    out = run_python(GEN_PROBE, args=['chat', sdar_dir('SDAR-tiny-b32'), '--backend', 'pytorch', *flags])
    lines = [line for line in out.stdout.splitlines() if line.startswith('PROBE')]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[0][5:])


def test_good_flags_reach_the_sessions_generation_config(sdar_dir):
    got = _gen_config(sdar_dir, '--top-p', '0.9', '--top-k', '0', '--temperature', '0', '--repetition-penalty',
                      '1.1', '--max-new-tokens', '64')
    assert got == dict(temperature=0.0, top_p=0.9, top_k=0, repetition_penalty=1.1, max_new_tokens=64,
                       clip=False)  # a budget the user gave must fit the session (refused otherwise)


def test_flags_left_out_keep_upstreams_chat_defaults(sdar_dir):
    from lmdeploy import GenerationConfig
    default = GenerationConfig()
    got = _gen_config(sdar_dir, '--top-p', '0.5')
    assert got == dict(temperature=default.temperature, top_p=0.5, top_k=default.top_k,
                       repetition_penalty=default.repetition_penalty, max_new_tokens=4096,  # chat's 4096,
                       clip=True)  # cut to the session's room where it does not fit


# ---- GenerationConfig (pipeline) ------------------------------------------------------------------------

@pytest.mark.parametrize('field, value, fragment', [
    ('top_p', 7, 'top_p: must be a number in (0, 1], got 7'),
    ('top_p', 0.0, 'top_p: must be a number in (0, 1]'),
    ('temperature', -1.0, 'temperature: must be a number in [0, 2]'),
    ('top_k', -2, 'top_k: must be an integer >= 0'),
    ('repetition_penalty', 0.0, 'repetition_penalty: must be a number > 0'),
    ('min_p', 1.5, 'min_p: must be a number in [0, 1]'),
    ('random_seed', -1, 'random_seed: must be an integer in [0, 2**63 - 1]'),
    ('max_new_tokens', -1, 'max_new_tokens: must be an integer >= 0'),
])
def test_generation_config_raises_a_value_error_naming_the_field(field, value, fragment):
    """``pipe(prompts, gen_config=GenerationConfig(top_p=7))`` fails where the config is written (upstream:
    a bare ``AssertionError``, or, for the unchecked fields, a request the engine then choked on)."""
    from lmdeploy import GenerationConfig
    from lmdeploy_focus.serving.validation import FieldError
    with pytest.raises(ValueError) as info:
        GenerationConfig(**{field: value})
    assert isinstance(info.value, FieldError) and info.value.param == field and fragment in str(info.value)


def test_generation_config_still_builds_what_upstream_builds():
    from lmdeploy import GenerationConfig
    assert GenerationConfig().max_new_tokens == 512
    assert GenerationConfig(max_new_tokens=None, do_sample=True).max_new_tokens is None  # api_server, no max_tokens
    logits = GenerationConfig(max_new_tokens=0, output_logits='all', top_k=1)  # AsyncEngine.get_logits
    assert (logits.max_new_tokens, logits.output_logits, logits.top_k) == (0, 'all', 1)
    edges = GenerationConfig(top_p=1.0, top_k=0, temperature=0.0, repetition_penalty=1.3, random_seed=0)
    assert (edges.top_p, edges.top_k, edges.temperature, edges.random_seed) == (1.0, 0, 0.0, 0)


def test_generation_config_takes_numpy_scalars_as_upstream_did():
    """Values read out of an array are numpy scalars (np.int64 is no ``int``); upstream accepted them."""
    import numpy as np
    from lmdeploy import GenerationConfig
    values = dict(top_k=np.int64(np.random.randint(0, 50)), max_new_tokens=np.int32(np.random.randint(1, 512)),
                  random_seed=np.uint32(np.random.randint(0, 2**31)), top_p=np.float32(0.9), min_p=np.float64(0.1))
    config = GenerationConfig(**values)
    assert {name: getattr(config, name) for name in values} == values
    with pytest.raises(ValueError, match='top_k'):
        GenerationConfig(top_k=np.int64(-1))
    with pytest.raises(ValueError, match='top_k'):
        GenerationConfig(top_k=np.bool_(True))
