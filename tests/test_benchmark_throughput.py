"""CPU tests of benchmark/profile_throughput.py: dataset loading, prompt sampling, repetition guard,
metrics, reports, the async runner against a fake engine, and one-line CLI errors. No GPU."""
import asyncio
import csv
import glob
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'benchmark')
SCRIPT = os.path.join(BENCH, 'profile_throughput.py')
SAMPLE = os.path.join(BENCH, 'data', 'sharegpt_sample.json')

sys.path.insert(0, BENCH)
from throughput import datasets, engine_runner, metrics, prompts, repeat_guard, report  # noqa: E402
from throughput.errors import BenchmarkInputError  # noqa: E402

sys.path.remove(BENCH)


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from lmdeploy_focus_dev.tools.qwen3_tokenizer import write_qwen3_tokenizer_files
    d = tmp_path_factory.mktemp('tok')
    write_qwen3_tokenizer_files(d)
    return AutoTokenizer.from_pretrained(str(d))


def _write(path, records, jsonl=False):
    with open(path, 'w') as f:
        if jsonl:
            f.write('\n'.join(json.dumps(r) for r in records) + '\n')
        else:
            json.dump(records, f)
    return str(path)


SHAREGPT = [
    {'conversations': [{'from': 'system', 'value': 'Be brief.'}, {'from': 'human', 'value': 'What is a KV cache?'},
                       {'from': 'gpt', 'value': 'It stores keys and values of past tokens.'},
                       {'from': 'human', 'value': 'More?'}, {'from': 'gpt', 'value': 'No.'}]},
    {'conversations': [{'from': 'human', 'value': 'Hello there, how are you today?'}, {'from': 'gpt', 'value': ''}]},
    {'conversations': [{'from': 'gpt', 'value': 'assistant first'}, {'from': 'human', 'value': 'x'}]},
    {'messages': [{'role': 'user', 'content': 'Explain paged attention in one line.'},
                  {'role': 'assistant', 'content': 'Attention over KV stored in fixed-size pages.'}]},
    {'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Yes'}]},  # too short
]


# ---------------------------------------------------------------- datasets
@pytest.mark.parametrize('jsonl', [False, True])
def test_sharegpt_first_user_turn_with_system_prefix(tmp_path, jsonl):
    path = _write(tmp_path / ('d.jsonl' if jsonl else 'd.json'), SHAREGPT, jsonl)
    convs = datasets.load_conversations(path)
    assert len(convs) == 3  # empty reply and assistant-first conversations are dropped
    assert [m['role'] for m in convs[0].messages] == ['system', 'user']
    assert convs[0].messages[1]['content'] == 'What is a KV cache?'
    assert convs[0].reference.startswith('It stores')
    assert convs[1].messages[0]['content'].startswith('Explain paged')


def test_gsm8k_and_math_formats(tmp_path):
    gsm = _write(tmp_path / 'g.jsonl', [{'question': 'What is 2+3?', 'answer': 'It is 5. #### 5'}], jsonl=True)
    math = _write(tmp_path / 'm.json', [{'problem': 'Solve x+1=2.', 'solution': 'x equals 1, so $x=1$.'}])
    for path, fmt in ((gsm, 'gsm8k'), (math, 'math')):
        for given in ('auto', fmt):
            (conv, ) = datasets.load_conversations(path, given)
            assert conv.messages[0]['role'] == 'user'
    with pytest.raises(BenchmarkInputError, match='no usable math'):
        datasets.load_conversations(gsm, 'math')


def test_shipped_sample_is_sharegpt_and_large_enough():
    convs = datasets.load_conversations(SAMPLE)
    assert len(convs) >= 256  # batch size 256 gets distinct prompts


@pytest.mark.parametrize('content,match', [('{"a": 1}', 'cannot tell the dataset format'), ('not json\n', 'neither JSON'),
                                           ('[]', 'no records')])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / 'bad.json'
    path.write_text(content)
    with pytest.raises(BenchmarkInputError, match=match):
        datasets.load_conversations(str(path))


def test_missing_path_and_hf_without_datasets(monkeypatch):
    with pytest.raises(BenchmarkInputError, match='not found'):
        datasets.load_conversations('/no/such/file.json')
    monkeypatch.setitem(sys.modules, 'datasets', None)  # import fails as if not installed
    with pytest.raises(BenchmarkInputError, match='need the `datasets` package'):
        datasets.load_conversations('openai/gsm8k')


# ---------------------------------------------------------------- prompts / sampling
def test_sampling_templates_filters_and_is_seeded(tmp_path, tokenizer):
    convs = datasets.load_conversations(_write(tmp_path / 'd.json', SHAREGPT))
    chosen = prompts.sample_prompts(convs, tokenizer, 10, 64, seed=0)
    assert len(chosen) == 2  # 'Hi'/'Yes' fails the 4-token reply filter; capped by availability
    assert all(p.max_new_tokens == 64 and p.text.startswith('<|im_start|>') for p in chosen)
    assert all(p.input_ids == tokenizer.encode(p.text, add_special_tokens=False) for p in chosen)
    big = datasets.load_conversations(SAMPLE)
    a = prompts.sample_prompts(big, tokenizer, 20, 64, seed=1)
    b = prompts.sample_prompts(big, tokenizer, 20, 64, seed=1)
    c = prompts.sample_prompts(big, tokenizer, 20, 64, seed=2)
    assert [p.input_ids for p in a] == [p.input_ids for p in b] != [p.input_ids for p in c]


def test_random_prompts():
    ps = prompts.random_prompts(5, 16, 8, vocab_high=2000, seed=3)
    assert len(ps) == 5 and all(len(p.input_ids) == 16 and p.max_new_tokens == 8 and p.text is None for p in ps)
    assert all(prompts.RANDOM_ID_LOW <= t < 2000 for p in ps for t in p.input_ids)
    assert [p.input_ids for p in ps] == [p.input_ids for p in prompts.random_prompts(5, 16, 8, 2000, 3)]


@pytest.mark.parametrize('vocab', [260, 1999])
def test_random_prompts_stay_inside_a_small_vocabulary(vocab):
    """Ids at or above the model's vocabulary crash the engine (the embedding's device-side assert): the tiny
    byte-level model (256 ordinary ids) drew every id from [1000, 1001) before."""
    ps = prompts.random_prompts(8, 256, 8, vocab_high=vocab, seed=random.randint(0, 10**6))
    ids = [t for p in ps for t in p.input_ids]
    assert 0 <= min(ids) and max(ids) < vocab and len(set(ids)) > vocab // 2
    with pytest.raises(prompts.BenchmarkInputError, match='vocabulary of 0 ids'):
        prompts.random_prompts(1, 4, 4, vocab_high=0, seed=0)


# ---------------------------------------------------------------- repetition guard
def test_repeat_point_window_and_minimum():
    block = list(range(100, 132))
    assert repeat_guard.repeat_point(list(range(200)) + block * 3, 0) == 200 + 96
    assert repeat_guard.repeat_point([7] * 23, 0) is None          # 3 windows of 8 need 24 tokens
    assert repeat_guard.repeat_point([7] * 24, 0) == 24
    assert repeat_guard.repeat_point(list(range(96)), 0) is None
    # window grows with the output: 3 x 10 tokens repeat at length 30 (window = 30 // 3)
    assert repeat_guard.repeat_point(list(range(10)) * 3, 0) == 30


def test_repeat_guard_chunks_count_up_to_detection():
    guard = repeat_guard.RepeatGuard(32)
    assert not guard.feed(list(range(32)))
    assert not guard.feed([5] * 64)   # the window is min(32, n // 3): 3 windows still reach the prefix
    assert guard.feed([5] * 64)       # 3 windows of 32 equal tokens end at length 128
    assert guard.stop_at == 128 and guard.feed([1])


# ---------------------------------------------------------------- metrics
def _record(start, times, sizes, status='finish'):
    r = metrics.RequestRecord(input_len=10, start=start)
    for t, n in zip(times, sizes):
        r.add_chunk(t, n)
    r.end, r.output_len, r.status = times[-1], sum(sizes), status
    return r


def test_summarize_definitions():
    recs = [_record(0.0, [1.0, 2.0, 3.0], [4, 4, 4]), _record(1.0, [1.5, 3.5], [2, 2], 'repeat_stopped')]
    bad = metrics.RequestRecord(input_len=5, start=0.0, status='error')
    s = metrics.summarize(recs + [bad], duration=4.0)
    assert (s['requests'], s['completed'], s['failed'], s['repeat_stopped']) == (3, 2, 1, 1)
    assert (s['input_tokens'], s['output_tokens']) == (20, 16)
    assert s['output_tok_per_s'] == 4.0 and s['request_per_s'] == 0.5 and s['input_tok_per_s'] == 5.0
    assert s['ttft_ms']['mean'] == pytest.approx(750.0)           # (1.0 + 0.5) / 2 s
    assert s['tpot_ms']['mean'] == pytest.approx((2 / 11 + 2 / 3) / 2 * 1e3, rel=1e-4)
    assert s['itl_ms']['p50'] == pytest.approx(1000.0)            # gaps 1, 1, 2 s
    assert s['e2e_s']['mean'] == pytest.approx(2.75)
    assert metrics.distribution([]) is None
    # a small run keeps each request's [submit, first output, last output] (ms from the first submit, prompt order)
    assert s['request_timeline_ms'] == [[0.0, 1000.0, 3000.0], [1000.0, 1500.0, 3500.0], [0.0, None, None]]


def test_summarize_keeps_no_timeline_for_large_runs():
    recs = [_record(0.01 * i, [1.0 + i], [4]) for i in range(metrics.TIMELINE_MAX_REQUESTS + 1)]
    assert 'request_timeline_ms' not in metrics.summarize(recs, duration=10.0)
    assert len(metrics.summarize(recs[:-1], duration=10.0)['request_timeline_ms']) == metrics.TIMELINE_MAX_REQUESTS


# ---------------------------------------------------------------- report
def _ok_record(arm='stock-static', conc=32, tok=1000.0, dllm=None):
    m = metrics.summarize([_record(0.0, [1.0, 2.0], [32, 32])], 2.0)
    m['output_tok_per_s'] = tok
    return report.result_record(arm=arm, status='ok', model='/ckpt/SDAR-8B-Chat-b32', dataset='random',
                                concurrency=conc, num_prompts=conc, settings={}, engine_config={}, metrics=m,
                                dllm_metrics=dllm, env={'gpu': 'test'}, command='python x')


def test_report_json_csv_and_table(tmp_path):
    rec = _ok_record(dllm={'status': 'missing', 'reason': 'not collected'})
    path = report.write_json(rec, str(tmp_path))
    assert json.load(open(path))['metrics']['output_tok_per_s'] == 1000.0
    miss = report.result_record(arm='focus-importance', status='missing', model='m', dataset='random', concurrency=32,
                                num_prompts=32, settings={}, engine_config={}, reason='FOCUS not implemented',
                                env={}, command='c')
    for r in (rec, miss):
        report.append_csv(r, str(tmp_path), 'x.json')
    rows = list(csv.DictReader(open(tmp_path / report.CSV_NAME)))
    assert [r['status'] for r in rows] == ['ok', 'missing'] and rows[1]['reason'] == 'FOCUS not implemented'
    assert rows[0]['reason'] == 'not collected' and rows[0]['output_tok_per_s'] == '1000.0'
    table = report.format_table(rec)
    for needle in ('output throughput (tok/s)', 'TTFT (ms)', 'TPOT (ms)', 'ITL (ms)', 'E2E (s)', 'p99',
                   'DLLM metrics: missing (not collected)'):
        assert needle in table
    assert 'MISSING: FOCUS not implemented' in report.format_table(miss)


# ---------------------------------------------------------------- runner against a fake engine
class _FakeInstance:
    """Streams fixed blocks like a DLLM engine; honours cancel."""

    def __init__(self, engine):
        self.engine = engine

    async def async_stream_infer(self, session_id, input_ids, gen_config):
        from lmdeploy.messages import EngineOutput, ResponseType
        self.engine.active += 1
        self.engine.peak = max(self.engine.peak, self.engine.active)
        try:
            made = 0
            while made < gen_config.max_new_tokens:
                await asyncio.sleep(0.001)
                if session_id in self.engine.cancelled:
                    yield EngineOutput(ResponseType.CANCEL, [])
                    return
                block = self.engine.block(session_id, made)
                made += len(block)
                done = made >= gen_config.max_new_tokens
                yield EngineOutput(ResponseType.FINISH if done else ResponseType.SUCCESS, block)
        finally:
            self.engine.active -= 1

    async def async_cancel(self, session_id):
        self.engine.cancelled.add(session_id)


class _FakeEngine:
    def __init__(self, block):
        self.block, self.active, self.peak, self.cancelled = block, 0, 0, set()

    def create_instance(self):
        return _FakeInstance(self)


def test_runner_concurrency_and_counts(tokenizer):
    engine = _FakeEngine(lambda sid, made: list(range(made, made + 8)))
    ps = prompts.random_prompts(10, 12, 32, 5000, 0)
    streamer = engine_runner.RequestStreamer(tokenizer, skip_tokenize=True, skip_detokenize=False, repeat_window=32)
    make = lambda p: engine_runner.generation_config(p.max_new_tokens, True, [], 0)  # noqa: E731
    recs, duration = asyncio.run(engine_runner.run_requests(engine, ps, 4, streamer, make, progress=False))
    assert engine.peak == 4 and duration > 0
    assert all(r.output_len == 32 and r.status == 'finish' and len(r.chunk_times) == 4 for r in recs)
    assert metrics.summarize(recs, duration)['output_tokens'] == 320


def test_runner_repeat_guard_cancels_and_counts_to_detection(tokenizer):
    engine = _FakeEngine(lambda sid, made: [9] * 16)  # degenerate output, as random weights produce
    ps = prompts.random_prompts(3, 12, 256, 5000, 0)
    streamer = engine_runner.RequestStreamer(tokenizer, repeat_window=32)
    make = lambda p: engine_runner.generation_config(p.max_new_tokens, True, [], 0)  # noqa: E731
    recs, _ = asyncio.run(engine_runner.run_requests(engine, ps, 3, streamer, make, progress=False))
    assert all(r.status == 'repeat_stopped' and r.output_len == 24 for r in recs)
    assert len(engine.cancelled) == 3


def test_engine_settings_follow_the_fork():
    args = __import__('argparse').Namespace(max_prefill_token_num=None, cache_max_entry_count=0.8, eager_mode=True,
                                            session_len=None, dllm_block_length=None, dllm_unmasking_strategy=None,
                                            dllm_denoising_steps=8, dllm_confidence_threshold=0.9,
                                            dllm_enable_delayed_cache=False, dllm_enable_focus=False,
                                            dllm_focus_alpha=None, dllm_track=True)
    facts = engine_runner.ModelFacts('sdar', True, 32)
    kw = engine_runner.engine_config_kwargs(args, 64, facts)
    assert (kw['max_batch_size'], kw['max_prefill_token_num'], kw['block_size']) == (64, 2048, 64)
    assert kw['enable_prefix_caching'] is False and kw['dllm_denoising_steps'] == 8 and 'dllm_block_length' not in kw


def test_model_facts_reads_block_from_path(tmp_path):
    d = tmp_path / 'SDAR-8B-Chat-b16'
    d.mkdir()
    (d / 'config.json').write_text(json.dumps({'model_type': 'sdar'}))
    assert engine_runner.model_facts(str(d), None) == engine_runner.ModelFacts('sdar', True, 16)
    (d / 'config.json').write_text(json.dumps({'model_type': 'qwen3'}))
    assert engine_runner.model_facts(str(d), None).is_dllm is False
    # the engine's reading of the block length (patch 19 caps its batch by it): a hub cache snapshot, a symlink
    snap = tmp_path / 'models--JetLM--SDAR-8B-Chat-b64' / 'snapshots' / 'abc'
    snap.mkdir(parents=True)
    (snap / 'config.json').write_text(json.dumps({'model_type': 'sdar'}))
    (tmp_path / 'current').symlink_to(snap)
    assert [engine_runner.model_facts(str(p), None).block_length for p in (snap, tmp_path / 'current')] == [64, 64]


def test_a_hub_id_is_read_from_the_folder_the_engine_will_load(tmp_path, monkeypatch):
    """The drivers' default model is a hub id: read as no model it ran labelled 'ar' with no statistics read."""
    import lmdeploy.utils
    snap = tmp_path / 'models--JetLM--SDAR-8B-Chat-b32' / 'snapshots' / 'abc'
    snap.mkdir(parents=True)
    (snap / 'config.json').write_text(json.dumps({'model_type': 'sdar'}))
    asked = []
    monkeypatch.setattr(lmdeploy.utils, 'get_model', lambda name: asked.append(name) or str(snap))
    folder = engine_runner.local_model_path('JetLM/SDAR-8B-Chat-b32')
    assert (folder, asked) == (str(snap), ['JetLM/SDAR-8B-Chat-b32'])
    assert engine_runner.model_facts(folder, None) == engine_runner.ModelFacts('sdar', True, 32)
    assert engine_runner.local_model_path(str(snap)) == str(snap) and len(asked) == 1  # a local folder as given


# ---------------------------------------------------------------- CLI: one-line errors
@pytest.mark.parametrize('dataset_args,needle', [
    (['/no/such/data.json'], 'dataset file not found'),
    (['{bad}', '--dataset-format', 'gsm8k'], 'no usable gsm8k records'),
    (['{bad}'], 'cannot tell the dataset format'),
])
def test_cli_bad_dataset_is_one_line(tmp_path, dataset_args, needle):
    bad = _write(tmp_path / 'bad.json', [{'conversations_x': 1}])
    args = [a.replace('{bad}', bad) for a in dataset_args]
    proc = subprocess.run([sys.executable, SCRIPT, args[0], str(tmp_path), *args[1:]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('profile_throughput: error:') and needle in err[0], proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('model, extra, needle', [
    # a FOCUS flag is checked as it is parsed (a usage error naming the flag)
    ('models/tiny-sdar-5m-b32', ['--dllm-enable-focus', '--dllm-focus-alpha', '0.5'],
     'argument --dllm-focus-alpha: dllm_focus_alpha must be'),
    ('models/tiny-sdar-5m-b32', ['--dllm-enable-focus', '--dllm-option', 'focus_alpha=0.5'],
     'dllm_focus_alpha must be'),
    ('models/tiny-sdar-5m-b32', ['--dllm-confidence-threshold', '5'], 'dllm_confidence_threshold must be'),
    ('models/no-such-model', [], "'models/no-such-model' is not an existing directory"),  # not sent to the hub
])
def test_cli_bad_model_or_option_is_one_line(model, extra, needle):
    """They were tracebacks (a config ValueError after the tokenizer loaded; a hub lookup with retries). Found by a
    newcomer run-through."""
    proc = subprocess.run([sys.executable, SCRIPT, 'random', model, *extra], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(('profile_throughput: error:', 'profile_throughput.py: error:')), proc.stderr[-2000:]
    assert needle in last, proc.stderr[-2000:]


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='the message of a machine without CUDA')
def test_build_engine_without_cuda_says_so():
    with pytest.raises(engine_runner.BenchmarkInputError, match='needs a CUDA GPU|no CUDA GPU is visible'):
        engine_runner.build_engine('models/tiny-sdar-5m-b32', {})


# ---------------------------------------------------------------- plot_results: markdown from JSON
def test_plot_results_markdown_marks_missing(tmp_path):
    sys.path.insert(0, BENCH)
    try:
        import plot_results
    finally:
        sys.path.remove(BENCH)
    report.write_json(_ok_record(conc=32, tok=1000.0), str(tmp_path))
    report.write_json(_ok_record(conc=64, tok=1500.0), str(tmp_path))
    miss = report.result_record(arm='focus-importance', status='missing', model='/ckpt/SDAR-8B-Chat-b32',
                                dataset='random', concurrency=32, num_prompts=32, settings={}, engine_config={},
                                reason='FOCUS not implemented yet', env={}, command='c')
    report.write_json(miss, str(tmp_path))
    plot_results.main([str(tmp_path), '--out-dir', str(tmp_path / 'out'), '--no-png', '--missing', 'focus-leftmost=none'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| stock-static (SDAR-8B-Chat-b32) | 1,000.0 | 1,500.0 |' in md
    assert '| focus-importance (SDAR-8B-Chat-b32) | missing | — |' in md
    assert 'focus-leftmost: missing: none' in md and 'FOCUS not implemented yet' in md


def test_dllm_metrics_come_from_the_engines_run_statistics():
    import gc

    import torch
    from lmdeploy_focus.stats import read_run_stats
    from lmdeploy_focus.strategies.dllm.run_stats import RunStats
    gc.collect()
    read_run_stats(reset=True)
    stats = RunStats()
    stats.add(decode_steps=10, generated_tokens=torch.tensor(30), processed_tokens=torch.tensor(200),
              deep_tokens=torch.tensor(60))
    dm = engine_runner.read_dllm_metrics()
    assert dm['status'] == 'ok' and dm['processed_tokens'] == 60 and dm['layer0_tokens'] == 200
    assert dm['denoising_steps'] == 10 and dm['processed_per_generated'] == 2.0 and dm['generated_per_step'] == 3.0
    assert engine_runner.read_dllm_metrics()['generated_tokens'] == 0  # read resets


# ---------------------------------------------------------------- profile_throughput: FOCUS policy, fast exit
def _load_profile_throughput():
    import importlib.util
    spec = importlib.util.spec_from_file_location('profile_throughput_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_focus_policy_and_commit_reach_the_engine_config():
    from lmdeploy import PytorchEngineConfig
    pt = _load_profile_throughput()
    facts = engine_runner.ModelFacts('sdar', True, 32)
    args = pt.parse_args(['random', '/m', '--dllm-enable-focus', '--dllm-focus-alpha', '2',
                          '--dllm-focus-policy', 'leftmost', '--dllm-delayed-cache-commit', 'fast'])
    kw = engine_runner.engine_config_kwargs(args, 64, facts)
    assert (kw['dllm_focus_policy'], kw['dllm_delayed_cache_commit']) == ('leftmost', 'fast')
    options = PytorchEngineConfig(**kw).focus_options()  # what the engine gets
    assert (options.focus_policy, options.delayed_cache_commit, options.focus_alpha) == ('leftmost', 'fast', 2.0)
    assert options.enable_delayed_cache and options.enable_focus
    assert pt.default_arm(args, facts) == 'focus-leftmost'
    # not given: left to the engine's defaults, and the arm name says importance
    plain = pt.parse_args(['random', '/m', '--dllm-enable-focus'])
    kw = engine_runner.engine_config_kwargs(plain, 64, facts)
    assert 'dllm_focus_policy' not in kw and 'dllm_delayed_cache_commit' not in kw
    assert pt.default_arm(plain, facts) == 'focus-importance'
    assert pt.default_arm(pt.parse_args(['random', '/m', '--dllm-enable-delayed-cache']), facts) == 'delayed-cache'
    with pytest.raises(SystemExit):
        pt.parse_args(['random', '/m', '--dllm-focus-policy', 'random'])



def test_any_engine_option_reaches_the_engine_config(capsys):
    from lmdeploy import PytorchEngineConfig
    pt = _load_profile_throughput()
    facts = engine_runner.ModelFacts('sdar', True, 32)
    every = random.randint(2, 64)
    args = pt.parse_args(['random', '/m', '--dllm-enable-focus', '--dllm-focus-alpha', 'auto',
                          '--dllm-option', f'focus_auto_shadow_every={every}',
                          '--dllm-option', 'focus_auto_target_recall=0.9'])
    options = PytorchEngineConfig(**engine_runner.engine_config_kwargs(args, 64, facts)).focus_options()
    assert (options.focus_auto_shadow_every, options.focus_auto_target_recall) == (every, 0.9)
    with pytest.raises(SystemExit):  # a usage error, not a traceback
        pt.parse_args(['random', '/m', '--dllm-option', 'focus_shadow'])
    assert 'NAME=VALUE' in capsys.readouterr().err
    for bad, message in (('focus_auto_shadow_every=0', 'integer >= 1'), ('no_such_option=1', 'not a FOCUS'),
                         ('enable_focus=True', r'its flag --dllm-enable-focus is given too')):
        with pytest.raises(pt.BenchmarkInputError, match=message):  # checked before the model is touched
            pt.validate(pt.parse_args(['random', '/m', '--dllm-enable-focus', '--dllm-option', bad]))
    # an option given once, as a flag or as --dllm-option (the suite's delayed_cache_commit=fast), is taken
    for way in (['--dllm-delayed-cache-commit', 'fast'], ['--dllm-option', 'delayed_cache_commit=fast']):
        args = pt.parse_args(['random', '/m', '--dllm-enable-focus', *way])
        pt.validate(args)
        assert engine_runner.engine_config_kwargs(args, 64, facts)['dllm_delayed_cache_commit'] == 'fast'


def test_every_arm_of_the_arm_table_parses_and_runs_what_it_says():
    """The arm table's flags are for profile_throughput.py too: every row of the option table has its flag here
    (shadow and every-step arms were usage errors), and the engine config gets the arm's fields."""
    from lmdeploy import PytorchEngineConfig
    sys.path.insert(0, BENCH)
    try:
        import arms
    finally:
        sys.path.remove(BENCH)
    pt = _load_profile_throughput()
    facts = engine_runner.ModelFacts('sdar', True, 32)
    for name in arms.ARMS:
        kwargs = engine_runner.engine_config_kwargs(pt.parse_args(['random', '/m', *arms.arm_flags(name)]), 64, facts)
        expected = PytorchEngineConfig(**arms.arm_fields(name)).focus_options()
        assert PytorchEngineConfig(**kwargs).focus_options() == expected, name


@pytest.mark.parametrize('argv, message', [
    (['--prompts-per-slot', '0'], '--prompts-per-slot must be >= 1'),  # 0 fell back to --num-prompts
    (['--prompts-per-slot', '-2'], '--prompts-per-slot must be >= 1'),  # a negative one cut prompts off the end
    (['--arm', 'a/b'], "--arm 'a/b': use letters"),  # the results' file name: FileNotFoundError after the timed run
])
def test_inputs_that_went_wrong_silently_or_late_are_usage_errors(argv, message):
    pt = _load_profile_throughput()
    with pytest.raises(pt.BenchmarkInputError, match=message):
        pt.validate(pt.parse_args(['random', '/m', *argv]))


def test_host_profile_help_exits_0_with_its_usage():
    """--help printed the usage as an error, exit 1. Found by a newcomer run-through."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, 'host_profile.py'), '--help'], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and 'host_profile.py --out PROFILE.json' in proc.stdout, proc.stderr[-1000:]


def test_host_profile_reports_a_bad_dataset_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, 'host_profile.py'), '--out', os.devnull, '--',
                           '/no/such/data.json', '/m'], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-300:]
    assert proc.stderr.strip().endswith('(give a JSON/JSONL file, "random" or a HuggingFace dataset id)')


_FAST_EXIT_HARNESS = r'''
import asyncio, importlib.util, os, sys
spec = importlib.util.spec_from_file_location('pt', sys.argv[1])
pt = importlib.util.module_from_spec(spec); spec.loader.exec_module(pt)
from throughput import metrics

class Tok:
    vocab_size = 1000
    eos_token_id = 2

class Engine:
    def close(self):
        print('ENGINE CLOSED', flush=True)

async def levels(engine, lvls, prompts_for, *a):
    for level in lvls:
        rec = metrics.RequestRecord(input_len=8, start=0.0)
        if os.environ.get('HARNESS_FAIL_LEVEL') == str(level):  # every request of this level fails
            rec.status = 'error'
        else:
            rec.add_chunk(1.0, 4); rec.add_chunk(2.0, 4); rec.end, rec.output_len = 2.0, 8
        yield level, metrics.summarize([rec], 2.0), [rec]

pt.load_tokenizer = lambda path: Tok()
pt.engine_runner.build_engine = lambda path, kw: Engine()
pt.engine_runner.profile_levels = levels
pt.main(sys.argv[2:])
print('AFTER MAIN', flush=True)
'''


def _run_harness(tmp_path, fast: bool, env=None):
    """profile_throughput.main at concurrency 2 and 4 against the fake engine of _FAST_EXIT_HARNESS."""
    harness = tmp_path / 'harness.py'
    harness.write_text(_FAST_EXIT_HARNESS)
    (tmp_path / 'model').mkdir(exist_ok=True)  # a local folder: no hub lookup
    out = tmp_path / 'out'
    argv = [sys.executable, str(harness), SCRIPT, 'random', str(tmp_path / 'model'), '--concurrency', '2', '4',
            '--max-new-tokens', '8', '--arm', 'x', '--output-dir', str(out)] + (['--fast-exit'] if fast else [])
    return out, subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                               env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize('fast', [False, True])
def test_a_level_whose_requests_all_failed_is_recorded_failed_and_fails_the_run(tmp_path, fast):
    """It was recorded 'ok' at 0 tok/s and the run exited 0, so the drivers and the suite went on as if measured."""
    out, proc = _run_harness(tmp_path, fast, env={'HARNESS_FAIL_LEVEL': '4'})
    assert proc.returncode == 1, proc.stdout[-500:] + proc.stderr[-500:]
    records = {c: json.load(open(out / f'x_model_c{c}.json')) for c in (2, 4)}
    assert records[2]['status'] == 'ok' and records[4]['status'] == 'failed'
    assert 'none of the requests completed' in records[4]['reason']


@pytest.mark.parametrize('fast', [False, True])
def test_fast_exit_skips_the_engine_shutdown_after_writing_results(tmp_path, fast):
    out, proc = _run_harness(tmp_path, fast)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob('*.json')) == ['x_model_c2.json', 'x_model_c4.json']
    assert len(list(csv.DictReader(open(out / report.CSV_NAME)))) == 2
    assert f"wrote {out / 'x_model_c4.json'}" in proc.stdout  # flushed before leaving
    assert ('ENGINE CLOSED' in proc.stdout) is (not fast) and ('AFTER MAIN' in proc.stdout) is (not fast)


# ---------------------------------------------------------------- drivers (DRY_RUN=1: commands, no GPU)
def _dry_commands(script, *args, env=None, cwd=None):
    """profile_throughput argument lists a driver (or the suite) prints under DRY_RUN=1, parsed."""
    import shlex
    pt = _load_profile_throughput()
    full_env = dict(os.environ, DRY_RUN='1', **(env or {}))
    proc = subprocess.run(['bash', script, *args], capture_output=True, text=True, timeout=120, env=full_env,
                          cwd=cwd or REPO)
    parsed = []
    for line in proc.stdout.splitlines():
        if line.startswith('DRY_RUN: ') and 'profile_throughput.py' in line:
            argv = shlex.split(line[len('DRY_RUN: '):])
            start = next(i for i, a in enumerate(argv) if a.endswith('profile_throughput.py')) + 1
            argv = argv[start:argv.index('2>&1')] if '2>&1' in argv else argv[start:]
            parsed.append(pt.parse_args(argv))
    return proc, parsed


def _driver(name):
    return os.path.join(BENCH, name)


def test_a_dry_run_creates_no_results_folder(tmp_path):
    """DRY_RUN=1 made ./results (or RESULTS_DIR) anyway. Found by a newcomer run-through."""
    out = tmp_path / 'results'
    proc, cmds = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random',
                               env=dict(RESULTS_DIR=str(out), ONE_ENGINE='1'))
    assert proc.returncode == 0 and cmds, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize('how', ['env', 'argument'])
def test_focus_driver_policy_is_selectable(tmp_path, how):
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='1')
    args = ['random', '/ckpt/SDAR-8B-Chat-b32', '1.5']
    if how == 'env':
        env['FOCUS_POLICY'] = 'leftmost'
    else:
        args.append('leftmost')
    proc, (cmd, ) = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (cmd.arm, cmd.dllm_focus_policy, cmd.dllm_focus_alpha) == ('focus-leftmost', 'leftmost', 1.5)
    assert cmd.dllm_enable_focus and cmd.dllm_enable_delayed_cache and cmd.dllm_track
    assert cmd.concurrency == [32, 64, 128, 256] and not list(tmp_path.glob('*.json'))  # nothing ran
    _, (default, ) = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random',
                                   env=env | {'FOCUS_POLICY': ''})
    assert (default.arm, default.dllm_focus_policy) == ('focus-importance', 'importance')
    bad, cmds = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random', 'm', '1.5', 'random', env=env)
    assert bad.returncode == 2 and not cmds and "unknown FOCUS policy 'random'" in bad.stderr


def test_focus_driver_names_a_non_default_alpha_in_the_arm(tmp_path):
    """A rerun with another alpha wrote the same arm's JSON (focus-importance_<model>_c<bs>.json), overwriting the
    default's result; the CSV kept both rows under one label."""
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='1', ARM_TAG='-static')
    arms = {}
    for alpha in ('1.5', '1.50', '2.0', 'auto'):
        proc, (cmd, ) = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random', '/ckpt/SDAR-8B-Chat-b32',
                                      alpha, env=env)
        assert proc.returncode == 0, proc.stderr
        arms[alpha] = (cmd.arm, cmd.dllm_focus_alpha)
    assert arms == {'1.5': ('focus-importance-static', 1.5), '1.50': ('focus-importance-static', 1.5),
                    '2.0': ('focus-importance-static-alpha2.0', 2.0),
                    'auto': ('focus-importance-static-alphaauto', 'auto')}


def test_every_driver_arm_runs_at_the_same_threshold(tmp_path):
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='1', ARM_TAG='-static', THRESHOLD='0.85')
    cmds = []
    for script in ('run_baseline_throughput_evaluation.sh', 'run_sdar_delayed_cache_benchmark.sh',
                   'run_focus_throughput_evaluation.sh'):
        cmds += _dry_commands(_driver(script), 'random', '/ckpt/SDAR-8B-Chat-b32', env=env)[1]
    cmds += _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random', '/ckpt/SDAR-8B-Chat-b32',
                          env=env | {'FOCUS_POLICY': 'leftmost'})[1]
    assert [c.arm for c in cmds] == ['stock-static', 'delayed-cache-static', 'focus-importance-static',
                                     'focus-leftmost-static']
    assert {c.dllm_confidence_threshold for c in cmds} == {0.85}
    assert [(bool(c.dllm_enable_delayed_cache), bool(c.dllm_enable_focus)) for c in cmds] == \
        [(False, False), (True, False), (True, True), (True, True)]  # None: not given
    paper = _dry_commands(_driver('run_focus_throughput_evaluation.sh'), 'random', env=env | {'PAPER_THRESHOLDS': '1'})
    assert paper[1][0].dllm_confidence_threshold == 0.8


def test_block_driver_arms_and_steps(tmp_path):
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='1', BATCH_SIZES='64 256', DENOISING_STEPS_PER_BLOCK_DIV='4',
               MODEL_PREFIX='/ckpt/SDAR-8B-Chat', ARMS='stock delayed-cache focus-importance focus-leftmost')
    proc, cmds = _dry_commands(_driver('run_block_size_comparison.sh'), 'random', env=env)
    assert proc.returncode == 0, proc.stderr
    got = [(os.path.basename(c.model_path), c.arm, c.dllm_block_length, c.dllm_denoising_steps, c.dllm_focus_policy,
            bool(c.dllm_enable_delayed_cache)) for c in cmds]  # None: not given
    assert got == [(f'SDAR-8B-Chat-b{L}', arm, L, L // 4, policy, cache) for L in (16, 64)
                   for arm, policy, cache in (('stock', None, False), ('delayed-cache', None, True),
                                              ('focus-importance', 'importance', True),
                                              ('focus-leftmost', 'leftmost', True))]
    bad, cmds = _dry_commands(_driver('run_block_size_comparison.sh'), 'random', env=env | {'ARMS': 'stock focus'})
    assert bad.returncode == 2 and not cmds and 'unknown arm focus' in bad.stderr


def test_per_level_driver_runs_one_command_per_batch_size(tmp_path):
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='0', BATCH_SIZES='32 64')
    proc, cmds = _dry_commands(_driver('run_sdar_delayed_cache_benchmark.sh'), 'random', '/ckpt/m-b32', env=env)
    assert [c.concurrency for c in cmds] == [[32], [64]] and {c.model_path for c in cmds} == {'/ckpt/m-b32'}


SUITE = os.path.join(BENCH, 'gpu', 'run_benchmark_suite.sh')


def _suite(tmp_path, phase):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'))
    proc, cmds = _dry_commands(SUITE, phase, str(tmp_path / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / 'out' / f'results_{phase}.tgz').exists() and (tmp_path / 'out' / f'suite_{phase}.log').exists()
    return proc.stdout, cmds


def test_suite_b32_phase_runs_the_four_arms_through_the_drivers(tmp_path):
    out, cmds = _suite(tmp_path, 'b32')
    static = [c for c in cmds if c.dllm_unmasking_strategy == 'low_confidence_static']
    assert [(c.arm, c.dllm_focus_policy) for c in static] == [
        ('stock-static', None), ('focus-importance-static', 'importance'), ('delayed-cache-static', None),
        ('focus-leftmost-static', 'leftmost')]
    for c in static:
        assert c.concurrency == [32, 64, 128, 256] and (c.dllm_block_length, c.dllm_denoising_steps) == (32, 8)
        assert (c.input_len, c.output_len, c.max_new_tokens, c.prompts_per_slot) == (256, 256, 256, 1)
    dynamic = [c for c in cmds if c.dllm_unmasking_strategy == 'low_confidence_dynamic']
    assert [c.arm for c in dynamic] == ['stock-dynamic', 'focus-importance-dynamic']
    assert all(c.concurrency == [64, 256] and c.dllm_denoising_steps == 32 for c in dynamic)
    assert {c.dllm_confidence_threshold for c in cmds} == {0.9}
    assert all(not c.eager_mode and c.dllm_track and c.fast_exit and c.ignore_eos for c in cmds)  # graphs
    assert {c.output_dir for c in cmds} == {str(tmp_path / 'res' / 'b32')}
    assert 'skipped' not in out


def test_drivers_run_graphs_unless_eager_mode_is_asked_for(tmp_path):
    _, graphs = _dry_commands(SUITE, 'b32', str(tmp_path / 'out'), env=dict(SUITE_RESULTS_ROOT=str(tmp_path / 'g')))
    _, eager = _dry_commands(SUITE, 'b32', str(tmp_path / 'out'),
                             env=dict(SUITE_RESULTS_ROOT=str(tmp_path / 'e'), EAGER_MODE='1'))
    assert graphs and not any(c.eager_mode for c in graphs)
    assert len(eager) == len(graphs) and all(c.eager_mode for c in eager)


def test_suite_blocks_phase_order_and_budget_guard(tmp_path):
    _, cmds = _suite(tmp_path, 'blocks')
    got = [(os.path.basename(c.model_path), c.arm) for c in cmds]
    assert got == [('SDAR-8B-Chat-b16', 'stock-static'), ('SDAR-8B-Chat-b16', 'focus-importance-static'),
                   ('SDAR-8B-Chat-b64', 'stock-static'), ('SDAR-8B-Chat-b64', 'focus-importance-static'),
                   ('SDAR-8B-Chat-b16', 'delayed-cache-static'), ('SDAR-8B-Chat-b64', 'delayed-cache-static'),
                   ('SDAR-8B-Chat-b32', 'stock-dynamic'), ('SDAR-8B-Chat-b32', 'focus-importance-dynamic')]
    assert all(c.concurrency == [64, 256] for c in cmds)
    assert [c.dllm_denoising_steps for c in cmds[:6]] == [4, 4, 16, 16, 4, 16]
    # a budget that leaves room for nothing runs nothing and says so
    proc, cmds = _dry_commands(SUITE, 'blocks', str(tmp_path / 'out2'),
                               env=dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), SUITE_BUDGET_S='60'))
    assert proc.returncode == 0 and not cmds
    assert proc.stdout.count('skipped (needs') == 7  # six block arms and the dynamic pair


def test_suite_blocks_phase_skips_the_dynamic_pair_phase_b32_measured(tmp_path):
    done = tmp_path / 'res' / 'b32'
    done.mkdir(parents=True)
    (done / 'focus-importance-dynamic_SDAR-8B-Chat-b32_c256.json').write_text('{}')
    out, cmds = _suite(tmp_path, 'blocks')
    assert len(cmds) == 6 and 'already measured by phase b32' in out


@pytest.mark.parametrize('phase, sizes, b64_first', [('dynamic', [64, 256], False), ('dynamic_rest', [32, 128], True)])
def test_suite_dynamic_phases(tmp_path, phase, sizes, b64_first):
    out, cmds = _suite(tmp_path, phase)
    dynamic = [c for c in cmds if c.dllm_unmasking_strategy == 'low_confidence_dynamic']
    assert [(c.arm, c.dllm_focus_policy) for c in dynamic] == [
        ('stock-dynamic', None), ('focus-importance-dynamic', 'importance'), ('delayed-cache-dynamic', None),
        ('focus-leftmost-dynamic', 'leftmost')]
    assert all(c.concurrency == sizes and c.dllm_denoising_steps == 32 and c.output_len == 128 for c in dynamic)
    b64 = [c for c in cmds if c.dllm_block_length == 64]
    assert [(c.arm, c.concurrency, c.dllm_denoising_steps) for c in b64] == [('delayed-cache-static', [64, 256], 16)]
    assert (cmds.index(b64[0]) == 0) == b64_first and len(cmds) == 5 and 'skipped' not in out


def _env_switches(out, name='LMDEPLOY_FOCUS_ROW_BUCKETS'):
    """The ``name`` value of each printed profile_throughput command (None: unset)."""
    import re
    lines = [line for line in out.splitlines() if line.startswith('DRY_RUN: ') and 'profile_throughput.py' in line]
    return [(m.group(1) if (m := re.search(rf'{name}=(\d+)', line)) else None) for line in lines]


def test_suite_row_buckets_phase_pairs_32_and_64_buckets(tmp_path):
    out, cmds = _suite(tmp_path, 'row_buckets')
    assert [(c.arm, c.dllm_unmasking_strategy, c.dllm_focus_policy) for c in cmds] == [
        ('stock-dynamic', 'low_confidence_dynamic', None),
        ('focus-importance-dynamic', 'low_confidence_dynamic', 'importance'),
        ('focus-importance-dynamic-rb64', 'low_confidence_dynamic', 'importance'),
        ('focus-importance-static-rb32', 'low_confidence_static', 'importance'),
        ('focus-importance-static-rb64', 'low_confidence_static', 'importance')]
    assert all(c.concurrency == [64, 256] and c.output_len == 256 and c.fast_exit for c in cmds)
    assert _env_switches(out) == [None, None, '64', '32', '64']  # the switch reaches each engine


def test_suite_front_buckets_phase_pairs_bucketed_and_whole_fronts(tmp_path):
    out, cmds = _suite(tmp_path, 'front_buckets')
    assert [(c.arm, c.dllm_unmasking_strategy, c.dllm_focus_policy) for c in cmds] == [
        ('focus-importance-dynamic-fb8', 'low_confidence_dynamic', 'importance'),
        ('stock-dynamic', 'low_confidence_dynamic', None),
        ('focus-importance-dynamic-fb1', 'low_confidence_dynamic', 'importance'),
        ('focus-importance-static-fb8', 'low_confidence_static', 'importance'),
        ('focus-importance-static-fb1', 'low_confidence_static', 'importance')]
    assert all(c.concurrency == [64, 256] and c.output_len == 256 and c.fast_exit for c in cmds)
    assert _env_switches(out, 'LMDEPLOY_FOCUS_FRONT_BUCKETS') == ['8', None, '1', '8', '1']
    assert _env_switches(out) == [None] * 5


def test_suite_cost_phase_is_unchanged(tmp_path):
    _, cmds = _suite(tmp_path, 'cost')
    assert [(c.arm, os.path.basename(c.model_path)) for c in cmds] == [
        ('stock-static', 'SDAR-8B-Chat-b32'), ('stock-dynamic', 'SDAR-8B-Chat-b32'), ('ar', 'Qwen3-8B'),
        ('stock-static', 'SDAR-8B-Chat-b16'), ('stock-static', 'SDAR-8B-Chat-b64'), ('stock', 'SDAR-8B-Chat-b32')]
    assert not any(c.fast_exit for c in cmds)
    # the cost points run to their nominal length; the shipped sample keeps the fork's repetition guard
    assert [c.repeat_block_detect for c in cmds] == [False] * 5 + [True]


def test_drivers_keep_the_repetition_guard_unless_told_not_to(tmp_path):
    env = dict(RESULTS_DIR=str(tmp_path), ONE_ENGINE='1')
    driver = _driver('run_baseline_throughput_evaluation.sh')
    _, (guarded, ) = _dry_commands(driver, 'random', '/ckpt/m', env=env)
    _, (unguarded, ) = _dry_commands(driver, 'random', '/ckpt/m', env=env | {'REPEAT_GUARD': '0'})
    assert (guarded.repeat_block_detect, guarded.repeat_block_window) == (True, 32)
    assert not unguarded.repeat_block_detect
    bad, cmds = _dry_commands(driver, 'random', '/ckpt/m', env=env | {'REPEAT_GUARD': 'no'})
    assert bad.returncode != 0 and not cmds and 'REPEAT_GUARD=no: 0 or 1' in bad.stderr
    # every cost point of the suite generates its nominal length (random MoE weights repeat: the guard had cut
    # 85 % of SDAR-MoE's requests at ~80 of 256 tokens)
    _, moe = _suite(tmp_path, 'sdar_moe')
    assert moe and not any(c.repeat_block_detect for c in moe) and all(c.ignore_eos for c in moe)



def test_suite_graphs_phase_ends_with_leftmost_on_the_fast_commit(tmp_path):
    out, cmds = _suite(tmp_path, 'graphs')
    assert [(c.arm, c.dllm_focus_policy, c.concurrency) for c in cmds] == [
        ('stock-static', None, [16, 32, 64, 128, 256]), ('focus-importance-static', 'importance', [16, 32, 64, 128, 256]),
        ('focus-leftmost-static', 'leftmost', [16, 32, 64, 128, 256]), ('stock-dynamic', None, [64, 256]),
        ('focus-importance-dynamic', 'importance', [64, 256]), ('focus-importance-dynamic-rb64', 'importance', [64, 256]),
        ('focus-leftmost-static-fast-commit', 'leftmost', [64, 256])]
    assert [c.dllm_option for c in cmds] == [[]] * 6 + [[('delayed_cache_commit', 'fast')]]
    assert all(not c.eager_mode and c.fast_exit and c.output_len == 256 for c in cmds)
    assert _env_switches(out) == [None] * 5 + ['64', None]


def test_suite_exits_with_a_failed_arms_status(tmp_path):
    """A phase whose arms fail (here every driver's python is `false`) exits non-zero: it always exited 0, so
    by_card.sh and a device call reported success."""
    env = dict(os.environ, DRY_RUN='1', PYTHON='false', SUITE_RESULTS_ROOT=str(tmp_path / 'res'))
    proc = subprocess.run(['bash', SUITE, 'b32', str(tmp_path / 'out')], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    assert proc.returncode == 1 and 'rc=1' in proc.stdout, proc.stdout[-500:]
    env['PYTHON'] = sys.executable  # the same phase with nothing failing
    assert subprocess.run(['bash', SUITE, 'b32', str(tmp_path / 'out2')], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO).returncode == 0


def test_suite_graphs_phase_takes_a_shorter_batch_list(tmp_path):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), GRAPHS_BATCH_SIZES='64 256')
    proc, cmds = _dry_commands(SUITE, 'graphs', str(tmp_path / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    static = [c for c in cmds if c.dllm_unmasking_strategy == 'low_confidence_static']
    assert [(c.arm, c.concurrency) for c in static][:3] == [
        ('stock-static', [64, 256]), ('focus-importance-static', [64, 256]), ('focus-leftmost-static', [64, 256])]
    for arm in ('stock', 'focus-importance', 'focus-leftmost'):  # 30 s + 20 s a batch size (5 sizes: 130 s)
        assert f'{arm} static: start (expect ~70 s' in proc.stdout


def _fake_card(tmp_path, name):
    """A PATH whose nvidia-smi names ``name`` (by_card.sh branches on it)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / 'nvidia-smi'
    smi.write_text(f'#!/bin/sh\necho "{name}"\n')
    smi.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize('card', ['NVIDIA H200', 'NVIDIA H100 80GB HBM3'])
def test_by_card_runs_the_table_on_an_h200_only(tmp_path, card):
    out = tmp_path / 'out'
    env = dict(PATH=_fake_card(tmp_path, card), SUITE_RESULTS_ROOT=str(tmp_path / 'res'), H100_JOB='none',
               GRAPHS_BATCH_SIZES='64 256')
    proc, cmds = _dry_commands(os.path.join(BENCH, 'gpu', 'by_card.sh'), str(out), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.load(open(out / 'versions.json'))['gpu'] == card
    if 'H200' in card:  # the graphs phase, whatever H100_JOB says
        assert [c.arm for c in cmds][:3] == ['stock-static', 'focus-importance-static', 'focus-leftmost-static']
        assert (out / 'results_graphs.tgz').exists()
    else:  # H100_JOB=none: the card and versions only
        assert cmds == [] and not (out / 'results_graphs.tgz').exists()


@pytest.mark.parametrize('card, job', [('NVIDIA H200', 'PHASE_H200'), ('NVIDIA H100 80GB HBM3', 'H100_JOB')])
def test_by_card_phases_job_profiles_one_bs256_focus_step_with_graphs(tmp_path, card, job):
    env = dict(os.environ, PATH=_fake_card(tmp_path, card), DRY_RUN='1', **{job: 'phases'})
    proc = subprocess.run(['bash', os.path.join(BENCH, 'gpu', 'by_card.sh'), str(tmp_path / 'out')],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line, ) = [x for x in proc.stdout.splitlines() if x.startswith('DRY_RUN:')]
    assert 'focus_check.sh' in line and ' sdar-8b ' in line
    assert '--profile-arms focus_importance --profile-batch-size 256 --profile-graphs' in line


def test_suite_llada2_phase_measures_the_llada2_table_without_the_sdar_checkpoint(tmp_path):
    out, cmds = _suite(tmp_path, 'llada2')
    assert [(c.arm, c.dllm_focus_policy) for c in cmds] == [
        ('stock-static', None), ('focus-importance-static', 'importance'),
        ('focus-importance-static-nozero', 'importance'), ('focus-leftmost-static', 'leftmost')]
    assert _env_switches(out, 'LMDEPLOY_FOCUS_ZERO_PADDING') == [None, None, '0', None]
    assert {os.path.basename(c.model_path) for c in cmds} == {'LLaDA2.0-mini-b32'}
    assert all(c.concurrency == [64, 256] and (c.dllm_block_length, c.dllm_denoising_steps) == (32, 8) for c in cmds)
    assert all(not c.eager_mode and c.fast_exit and (c.input_len, c.output_len) == (256, 256) for c in cmds)
    assert '--arch llada2-mini' in out and '--arch sdar-8b' not in out


def test_suite_sdar_moe_phase_runs_four_arms_on_the_half_depth_sdar_moe(tmp_path):
    out, cmds = _suite(tmp_path, 'sdar_moe')
    assert [(c.arm, c.dllm_focus_policy) for c in cmds] == [
        ('stock-static', None), ('delayed-cache-static', None), ('focus-importance-static', 'importance'),
        ('focus-leftmost-static', 'leftmost')]
    assert {os.path.basename(c.model_path) for c in cmds} == {'SDAR-30B-A3B-l24-b32'}
    assert all(c.concurrency == [64, 256] and (c.dllm_block_length, c.dllm_denoising_steps) == (32, 8) for c in cmds)
    assert all(not c.eager_mode and (c.input_len, c.output_len) == (256, 256) for c in cmds)
    assert '--arch sdar-30b-a3b-l24' in out and '--arch sdar-8b' not in out and 'skipped' not in out


def test_suite_fast_commit_phase_pairs_exact_and_fast_with_same_run_stock(tmp_path):
    out, cmds = _suite(tmp_path, 'fast_commit')
    assert [(c.arm, c.dllm_focus_policy, c.dllm_option) for c in cmds] == [
        ('stock-static', None, []), ('focus-leftmost-static', 'leftmost', []),
        ('focus-leftmost-static-fast-commit', 'leftmost', [('delayed_cache_commit', 'fast')]),
        ('focus-importance-static-fast-commit', 'importance', [('delayed_cache_commit', 'fast')])]
    assert all(c.concurrency == [64, 256] and not c.eager_mode and c.output_len == 256 for c in cmds)
    assert 'skipped' not in out


def test_suite_small_batches_phase_on_llada2_pairs_sync_free_and_every_step_without_the_sdar_driver(tmp_path):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), SMALL_MODEL='llada2-mini')
    proc, cmds = _dry_commands(SUITE, 'small_batches', str(tmp_path / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(c.arm, os.path.basename(c.model_path)) for c in cmds] == [
        ('stock-static', 'LLaDA2.0-mini-b32'), ('focus-importance-static', 'LLaDA2.0-mini-b32'),
        ('focus-importance-static-every-step', 'LLaDA2.0-mini-b32'), ('focus-importance-static-sf128', 'LLaDA2.0-mini-b32'),
        ('focus-importance-static-sf128-nozero', 'LLaDA2.0-mini-b32')]
    assert _env_switches(proc.stdout, 'LMDEPLOY_FOCUS_SYNC_FREE_ROWS') == [None, None, None, '128', '128']
    assert _env_switches(proc.stdout, 'LMDEPLOY_FOCUS_ZERO_PADDING') == [None, None, None, None, '0']
    assert '--arch llada2-mini' in proc.stdout and '--arch sdar-8b' not in proc.stdout


def test_suite_small_batches_phase_on_sdar_moe_runs_the_sdar_arms_on_its_checkpoint(tmp_path):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), SMALL_MODEL='sdar-moe', SMALL_BATCH_SIZES='1 4 16 32')
    proc, cmds = _dry_commands(SUITE, 'small_batches', str(tmp_path / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(c.arm, os.path.basename(c.model_path)) for c in cmds] == [
        ('stock-static', 'SDAR-30B-A3B-l24-b32'), ('focus-importance-static', 'SDAR-30B-A3B-l24-b32'),
        ('focus-importance-static-every-step', 'SDAR-30B-A3B-l24-b32'), ('delayed-cache-static', 'SDAR-30B-A3B-l24-b32')]
    assert all(c.concurrency == [1, 4, 16, 32] for c in cmds)
    assert '--arch sdar-30b-a3b-l24' in proc.stdout and '--arch sdar-8b' not in proc.stdout


def test_suite_rejects_an_unknown_small_model(tmp_path):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), SMALL_MODEL='qwen3')
    proc, _ = _dry_commands(SUITE, 'small_batches', str(tmp_path / 'out'), env=env)
    assert proc.returncode == 2 and 'SMALL_MODEL=qwen3: sdar-8b, llada2-mini or sdar-moe' in proc.stdout + proc.stderr


def test_suite_small_batches_phase_runs_four_waves_of_each_small_batch(tmp_path):
    out, cmds = _suite(tmp_path, 'small_batches')
    assert [(c.arm, c.dllm_focus_policy) for c in cmds] == [
        ('stock-static', None), ('focus-importance-static', 'importance'), ('focus-importance-static-every-step', 'importance'),
        ('delayed-cache-static', None)]
    # the engine's default (stock steps at bs <= 2) in the FOCUS arm; every step a delayed-cache / FOCUS step in the
    # arms that study that step
    assert [c.dllm_option for c in cmds] == [[], [], [('stock_step_rows', 0)], [('stock_step_rows', 0)]]
    assert all(c.concurrency == [1, 2, 4, 16] and c.prompts_per_slot == 4 and not c.eager_mode for c in cmds)
    assert all((c.input_len, c.output_len, c.dllm_denoising_steps) == (256, 256, 8) for c in cmds)
    assert 'skipped' not in out


def test_suite_small_batches_phase_can_end_with_a_second_stock_engine(tmp_path):
    env = dict(SUITE_RESULTS_ROOT=str(tmp_path / 'res'), SMALL_STOCK_AGAIN='1', SMALL_BATCH_SIZES='1 2', SMALL_WAVES='8')
    proc, cmds = _dry_commands(SUITE, 'small_batches', str(tmp_path / 'out'), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c.arm for c in cmds] == ['stock-static', 'focus-importance-static', 'focus-importance-static-every-step',
                                     'delayed-cache-static', 'stock-static-second-engine']
    first, second = cmds[0], cmds[-1]
    assert (second.dllm_option, second.dllm_enable_focus, second.dllm_enable_delayed_cache) == ([], None, None)
    assert all(c.concurrency == [1, 2] and c.prompts_per_slot == 8 for c in (first, second))


def test_suite_ttft_small_phase_alternates_stock_and_focus_engines_with_both_prefill_budgets(tmp_path):
    out, cmds = _suite(tmp_path, 'ttft_small')
    assert [(c.arm, c.dllm_focus_policy, c.max_prefill_token_num) for c in cmds] == [
        ('stock-static', None, None), ('focus-importance-static', 'importance', None),
        ('stock-static-second-engine', None, None), ('focus-importance-static-second-engine', 'importance', None),
        ('stock-static-whole-prefill', None, 512), ('focus-importance-static-whole-prefill', 'importance', 512),
        ('stock-static-whole-prefill-second-engine', None, 512),
        ('focus-importance-static-whole-prefill-second-engine', 'importance', 512)]
    # the engine's default step choice (stock steps at bs 2), 12 waves of bs 2, graphs on
    assert all(c.concurrency == [2] and c.prompts_per_slot == 12 and not c.eager_mode and c.dllm_option == []
               for c in cmds)
    assert all((c.input_len, c.output_len, c.dllm_denoising_steps) == (256, 256, 8) for c in cmds)
    assert 'skipped' not in out


LLADA2, SDAR8B = 'LLaDA2.0-mini-b32', 'SDAR-8B-Chat-b32'


@pytest.mark.parametrize('phase, arms, concurrency, switches', [
    ('await_stream', [('stock-static', LLADA2), ('focus-importance-static', LLADA2),
                      ('focus-importance-static-no-await', LLADA2), ('focus-importance-static', SDAR8B),
                      ('focus-importance-static-no-await', SDAR8B)], [[64, 256]] * 5, [None, None, '0', None, '0']),
    # the await / no-await pairs first, stock last
    ('await_small', [('focus-importance-static', SDAR8B), ('focus-importance-static-no-await', SDAR8B),
                     ('focus-importance-dynamic', SDAR8B), ('focus-importance-dynamic-no-await', SDAR8B),
                     ('stock-static', SDAR8B)], [[1, 4, 16]] * 2 + [[4, 16]] * 2 + [[1, 4, 16]],
     [None, '0', None, '0', None])])
def test_suite_await_phases_pair_the_default_with_the_switch_off(tmp_path, phase, arms, concurrency, switches):
    """Patch 18 (on by default) against LMDEPLOY_FOCUS_AWAIT_STREAM=0, every arm with graphs."""
    out, cmds = _suite(tmp_path, phase)
    assert [(c.arm, os.path.basename(c.model_path)) for c in cmds] == arms
    assert _env_switches(out, 'LMDEPLOY_FOCUS_AWAIT_STREAM') == switches
    assert [c.concurrency for c in cmds] == concurrency
    assert all(not c.eager_mode for c in cmds) and 'skipped' not in out
    if phase == 'await_small':  # the FOCUS arms' small batches run FOCUS steps, not the engine's default stock steps
        assert [c.dllm_option for c in cmds] == [[('stock_step_rows', 0)]] * 4 + [[]]


# ---------------------------------------------------------------- plot_results: merging result directories
def _plot_results():
    sys.path.insert(0, BENCH)
    try:
        import plot_results
    finally:
        sys.path.remove(BENCH)
    return plot_results


def _rec(arm, conc, tok, date, model='/ckpt/SDAR-8B-Chat-b32', status='ok', dllm=None, threshold=0.9, reason=None,
         unmasking='low_confidence_static'):
    r = _ok_record(arm=arm, conc=conc, tok=tok, dllm=dllm) if status == 'ok' else report.result_record(
        arm=arm, status='missing', model=model, dataset='random', concurrency=conc, num_prompts=conc, settings={},
        engine_config={}, reason=reason, env={}, command='c')
    r['model'], r['date'] = model, date
    r['settings'] = dict(dllm_confidence_threshold=threshold, dllm_denoising_steps=8, output_len=256,
                         dllm_unmasking_strategy=unmasking)
    return r


def test_plot_merges_directories_newest_point_wins_and_names_sources(tmp_path):
    pr = _plot_results()
    old, new = tmp_path / 'old_suite', tmp_path / 'new_b32'
    for r in (_rec('stock-static', 32, 1000.0, '2026-11-23T06:00:00+00:00'),
              _rec('stock-static', 64, 1500.0, '2026-11-23T06:00:00+00:00'),
              _rec('focus-importance-static', 32, 0, '2026-11-23T06:00:00+00:00', status='missing',
                   reason='not implemented yet'),
              _rec('focus-importance-static', 64, 0, '2026-11-23T06:00:00+00:00', status='missing',
                   reason='not implemented yet'),
              _rec('ar', 32, 700.0, '2026-11-23T06:00:00+00:00', model='/ckpt/Qwen3-8B')):
        report.write_json(r, str(old))
    for r in (_rec('stock-static', 32, 1100.0, '2026-11-24T06:00:00+00:00'),
              _rec('focus-importance-static', 32, 1650.0, '2026-11-24T06:00:00+00:00')):
        report.write_json(r, str(new))
    pr.main([str(old), str(new), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| stock-static (SDAR-8B-Chat-b32) | 1,100.0 | 1,500.0 |' in md   # bs 32 from the newer run
    assert 'stock-static (SDAR-8B-Chat-b32): points from several runs: bs 32 from new_b32; bs 64 from old_suite' in md
    # the obsolete 'missing' points are superseded by the newer measurement
    assert '| focus-importance-static (SDAR-8B-Chat-b32) | 1,650.0 | — |' in md and 'not implemented' not in md
    assert '| ar (Qwen3-8B) | 700.0 | — |' in md
    # speed-up only against the stock point of the same run: 1650 / 1100
    assert '| focus-importance-static (SDAR-8B-Chat-b32) | stock-static (SDAR-8B-Chat-b32) | 1.50× | — |' in md
    rows = [line for line in md.splitlines() if line.startswith('| stock-static (SDAR-8B-Chat-b32) | 32 |')]
    assert len(rows) == 1 and rows[0].endswith('| new_b32 |')


def test_plot_speedup_needs_same_run_and_settings(tmp_path):
    pr = _plot_results()
    a, b = tmp_path / 'a', tmp_path / 'b'
    report.write_json(_rec('stock-static', 64, 1000.0, '2026-11-23T06:00:00+00:00'), str(a))
    report.write_json(_rec('focus-importance-static', 64, 1500.0, '2026-11-24T06:00:00+00:00'), str(b))
    dyn = dict(unmasking='low_confidence_dynamic')
    report.write_json(_rec('stock-dynamic', 64, 500.0, '2026-11-24T06:00:00+00:00', **dyn), str(b))
    report.write_json(_rec('focus-importance-dynamic', 64, 900.0, '2026-11-24T06:00:00+00:00', threshold=0.8, **dyn),
                      str(b))
    pr.main([str(a), str(b), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert 'Speed-up over stock' not in md  # other run / other threshold: no ratio
    report.write_json(_rec('stock-static', 64, 1200.0, '2026-11-24T06:00:00+00:00'), str(b))
    pr.main([str(a), str(b), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| focus-importance-static (SDAR-8B-Chat-b32) | stock-static (SDAR-8B-Chat-b32) | 1.25× |' in md
    assert 'focus-importance-dynamic (SDAR-8B-Chat-b32) | stock' not in md
    # a newer FOCUS point at the stock's threshold gets its ratio
    report.write_json(_rec('focus-importance-dynamic', 64, 1000.0, '2026-11-25T06:00:00+00:00', **dyn), str(b))
    pr.main([str(a), str(b), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| focus-importance-dynamic (SDAR-8B-Chat-b32) | stock-dynamic (SDAR-8B-Chat-b32) | 2.00× |' in md


def test_plot_speedup_needs_the_same_engine_size_and_machine(tmp_path):
    """A stock run left in the folder by another run (an engine sized for other batches, another GPU) is not a
    reference: the table says why instead of printing a ratio of unlike engines."""
    pr = _plot_results()
    run = tmp_path / 'run'
    stock = _rec('stock-static', 64, 1000.0, '2026-11-24T06:00:00+00:00')
    stock['engine_config'] = dict(max_batch_size=64, max_prefill_token_num=2048)
    report.write_json(stock, str(run))
    focus = _rec('focus-importance-static', 64, 1500.0, '2026-11-25T06:00:00+00:00')
    focus['engine_config'] = dict(max_batch_size=256, max_prefill_token_num=8192)
    report.write_json(focus, str(run))
    pr.main([str(run), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert 'Speed-up over stock' not in md
    assert ('* focus-importance-static (SDAR-8B-Chat-b32), bs 64: no ratio: stock\'s run differs in max_batch_size '
            '(256 vs 64), max_prefill_token_num (8192 vs 2048)') in md
    focus['engine_config'], focus['environment'] = dict(stock['engine_config']), dict(gpu='NVIDIA H200')
    report.write_json(focus, str(run))
    pr.main([str(run), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert 'Speed-up over stock' not in md and "stock's run differs in gpu (NVIDIA H200 vs test)" in md
    focus['environment'] = dict(stock['environment'])
    report.write_json(focus, str(run))
    pr.main([str(run), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert '| stock-static (SDAR-8B-Chat-b32) | 1.50× |' in md and 'no ratio' not in md


def test_plot_speedup_takes_the_stock_arm_whose_tag_the_arm_extends(tmp_path):
    """A FOCUS arm with a longer ARM_TAG is compared with the stock arm whose tag it extends, never with a newer
    sibling stock arm (the second stock engine of the small_batches phase)."""
    pr = _plot_results()
    for r in (_rec('stock-static', 1, 1000.0, '2026-11-24T06:00:00+00:00'),
              _rec('focus-importance-static-every-step', 1, 900.0, '2026-11-24T06:10:00+00:00'),
              _rec('stock-static-second-engine', 1, 800.0, '2026-11-24T06:20:00+00:00')):
        report.write_json(r, str(tmp_path / 'run'))
    pr.main([str(tmp_path / 'run'), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    assert ('| focus-importance-static-every-step (SDAR-8B-Chat-b32) | stock-static (SDAR-8B-Chat-b32) | 0.90× |'
            in md)
    assert pr._extends('-static-every-step', '-static') and pr._extends('-static', '')
    assert not pr._extends('-static-every-step', '-static-second-engine') and not pr._extends('-staticx', '-static')


def test_plot_fills_dllm_columns_from_the_engines_statistics(tmp_path):
    import gc

    import torch
    from lmdeploy_focus.stats import read_run_stats
    from lmdeploy_focus.strategies.dllm.run_stats import RunStats
    pr = _plot_results()
    gc.collect()
    read_run_stats(reset=True)
    stats = RunStats()
    stats.add(decode_steps=10, generated_tokens=torch.tensor(40), processed_tokens=torch.tensor(300),
              deep_tokens=torch.tensor(100))
    dm = engine_runner.read_dllm_metrics()  # what profile_throughput stores per level
    del stats
    report.write_json(_rec('focus-importance-static', 32, 900.0, '2026-11-24T06:00:00+00:00', dllm=dm), str(tmp_path))
    report.write_json(_rec('stock-static', 32, 800.0, '2026-11-24T06:00:00+00:00',
                           dllm={'status': 'missing', 'reason': 'no plugin'}), str(tmp_path))
    report.write_json(_rec('ar', 32, 700.0, '2026-11-24T06:00:00+00:00', model='/ckpt/Qwen3-8B'), str(tmp_path))
    pr.main([str(tmp_path), '--out-dir', str(tmp_path / 'out'), '--no-png'])
    md = (tmp_path / 'out' / 'results.md').read_text()
    row = next(line for line in md.splitlines()
               if line.startswith('| focus-importance-static (SDAR-8B-Chat-b32) | 32 |'))
    assert row.endswith('| 2.50 | 4.00 | ' + tmp_path.name + ' |')  # 100 / 40 processed per generated, 40 / 10
    stock = next(line for line in md.splitlines() if line.startswith('| stock-static (SDAR-8B-Chat-b32) | 32 |'))
    assert '| missing | missing |' in stock
    assert '| n/a | n/a |' in next(line for line in md.splitlines() if line.startswith('| ar (Qwen3-8B) | 32 |'))


def test_plot_source_names_disambiguate_equal_basenames(tmp_path):
    pr = _plot_results()
    for d in ('x/results', 'y/results'):
        report.write_json(_rec('stock-static', 32, 1.0, '2026-11-24T06:00:00+00:00'), str(tmp_path / d))
    names = {r['_source'] for r in pr.load_results([str(tmp_path / 'x/results'), str(tmp_path / 'y/results')])}
    assert names == {str(tmp_path / 'x/results'), str(tmp_path / 'y/results')}
    assert pr.arm_base('focus-importance-static') == 'focus-importance' and pr.arm_base('stock') == 'stock'


# ---------------------------------------------------------------- committed results: JSON, table and PNG agree
RESULTS = os.path.join(BENCH, 'results')


def _plotted_result_dirs():
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(RESULTS, '*', 'throughput.png')))


def test_every_committed_plot_names_its_inputs():
    dirs = _plotted_result_dirs()
    assert dirs, 'no committed throughput results found'
    for d in dirs:
        assert os.path.exists(os.path.join(d, 'plot_inputs.json')), f'{d}: table/PNG without plot_inputs.json'


@pytest.mark.parametrize('result_dir', _plotted_result_dirs(), ids=os.path.basename)
def test_committed_json_table_and_png_agree(result_dir):
    assert _plot_results().check_agreement(result_dir) == []


def test_agreement_check_catches_an_edited_record(tmp_path):
    pr = _plot_results()
    src = os.path.join(RESULTS, '2026-11-23_h100_suite_b32')
    dst = tmp_path / os.path.basename(src)  # the table's source column is the directory's name
    shutil.copytree(src, dst)
    assert pr.check_agreement(str(dst)) == []
    path = dst / 'stock-static_SDAR-8B-Chat-b32_c64.json'
    record = json.loads(path.read_text())
    record['metrics']['output_tok_per_s'] += 100.0
    path.write_text(json.dumps(record))
    problems = pr.check_agreement(str(dst))
    assert any('results.md' in p for p in problems)
    assert any('throughput.png' in p for p in problems)
    assert any('plot_inputs.json' in p for p in problems)


# ---------------------------------------------------------------- plot_results: a newcomer's first run
def _plot_cli(*args):
    return subprocess.run([sys.executable, os.path.join(BENCH, 'plot_results.py'), *args], capture_output=True,
                          text=True, timeout=300)


def test_plot_results_missing_input_is_one_line(tmp_path):
    proc = _plot_cli(str(tmp_path / 'no_such_dir'), '--out-dir', str(tmp_path / 'out'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == f'plot_results: error: no such file or directory: {tmp_path / "no_such_dir"}'
    assert not (tmp_path / 'out').exists()


def test_plot_results_without_matplotlib_fails_before_writing(tmp_path):
    report.write_json(_ok_record(conc=32, tok=1000.0), str(tmp_path / 'in'))
    # a sitecustomize-free way to hide matplotlib: a module named matplotlib that fails to import
    hide = tmp_path / 'hide'
    (hide / 'matplotlib').mkdir(parents=True)
    (hide / 'matplotlib' / '__init__.py').write_text("raise ImportError('No module named matplotlib')\n")
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(hide), os.environ.get('PYTHONPATH', '')])}
    proc = subprocess.run([sys.executable, os.path.join(BENCH, 'plot_results.py'), str(tmp_path / 'in'), '--out-dir',
                           str(tmp_path / 'out')], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().startswith('plot_results: error: throughput.png needs matplotlib: pip install '
                                          'matplotlib')
    assert 'or pass --no-png' in proc.stderr and not (tmp_path / 'out').exists()
    # --no-png needs no matplotlib
    proc = subprocess.run([sys.executable, os.path.join(BENCH, 'plot_results.py'), str(tmp_path / 'in'), '--out-dir',
                           str(tmp_path / 'out'), '--no-png'], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['plot_inputs.json', 'results.md']


def test_plot_results_draws_the_png_that_check_agreement_reads(tmp_path):
    pytest.importorskip('matplotlib')  # in requirements/test_cpu.txt
    report.write_json(_ok_record(conc=32, tok=1000.0), str(tmp_path / 'in'))
    report.write_json(_ok_record(conc=64, tok=1500.0), str(tmp_path / 'in'))
    proc = _plot_cli(str(tmp_path / 'in'), '--out-dir', str(tmp_path / 'out'))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / 'out' / 'throughput.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    pr = _plot_results()
    assert pr.check_agreement(str(tmp_path / 'out')) == []
    series = json.loads(pr.png_text(str(tmp_path / 'out' / 'throughput.png'))[pr.PNG_SERIES_KEY])
    assert series == pr.plotted_series(pr.group(pr.load_results([str(tmp_path / 'in')])), {})


def test_plot_results_bad_missing_argument_is_one_line(tmp_path):
    report.write_json(_ok_record(conc=32, tok=1000.0), str(tmp_path / 'in'))
    proc = _plot_cli(str(tmp_path / 'in'), '--out-dir', str(tmp_path / 'out'), '--no-png', '--missing', 'focus')
    assert proc.returncode == 1
    assert proc.stderr.strip() == "plot_results: error: --missing takes ARM=REASON, got 'focus'"


def test_suite_graphs_rest_phase_runs_the_dynamic_pair_then_llada2(tmp_path):
    out, cmds = _suite(tmp_path, 'graphs_rest')
    assert [(c.arm, c.dllm_unmasking_strategy, c.dllm_focus_policy) for c in cmds] == [
        ('stock-dynamic', 'low_confidence_dynamic', None),
        ('focus-importance-dynamic', 'low_confidence_dynamic', 'importance'),
        ('stock-static', 'low_confidence_static', None),
        ('focus-importance-static', 'low_confidence_static', 'importance'),
        ('focus-leftmost-static', 'low_confidence_static', 'leftmost')]
    assert all(c.concurrency == [64, 256] and c.output_len == 256 and c.fast_exit for c in cmds)
    assert ['LLaDA2.0-mini' in c.model_path for c in cmds] == [False, False, True, True, True]
    assert 'skipped' not in out and '64 row buckets' not in out


def test_an_arm_label_that_contradicts_the_flags_is_refused(tmp_path):
    """EXTRA_ARGS repeating an arm flag ran one arm and saved it under the driver's label (FOCUS saved as the
    stock reference, leftmost as importance); a non-DLLM model ran under DLLM labels. Found by a drivers hunt."""
    pt = _load_profile_throughput()
    dllm, ar = engine_runner.ModelFacts('sdar', True, 32), engine_runner.ModelFacts('qwen3', False, None)

    def check(arm, facts, *flags):
        args = pt.parse_args(['random', str(tmp_path), '--arm', arm, *flags])
        pt.check_arm_label(args, facts)

    with pytest.raises(BenchmarkInputError, match="--arm stock: the engine flags run 'focus-importance'"):
        check('stock', dllm, '--dllm-enable-focus')
    with pytest.raises(BenchmarkInputError, match="the engine flags run 'focus-leftmost'"):
        check('focus-importance-static', dllm, '--dllm-enable-focus', '--dllm-focus-policy', 'leftmost')
    with pytest.raises(BenchmarkInputError, match='is not a diffusion LLM'):
        check('focus-importance', ar, '--dllm-enable-focus')
    check('focus-leftmost-static-fast-commit', dllm, '--dllm-enable-focus', '--dllm-focus-policy', 'leftmost')
    check('delayed-cache', dllm, '--dllm-enable-delayed-cache')
    check('importance', dllm, '--dllm-enable-focus')  # a label of its own (the GPU scripts' host profiles)
    check('ar', ar)


def test_the_arm_label_follows_the_options_the_engine_runs(tmp_path):
    """``--dllm-option focus_shadow=True`` ran delayed cache + FOCUS shadow saved as ``stock``: the label read the
    flags, and a hand list of the options --dllm-option may not set missed focus_shadow. Found by an options hunt."""
    from lmdeploy import PytorchEngineConfig
    from lmdeploy_focus.config.options import OPTIONS
    pt = _load_profile_throughput()
    dllm = engine_runner.ModelFacts('sdar', True, 32)
    args = pt.parse_args(['random', str(tmp_path), '--arm', 'stock', '--dllm-option', 'focus_shadow=True'])
    pt.validate(args)  # no flag sets it here: the option is the way
    with pytest.raises(BenchmarkInputError, match="--arm stock: the engine flags run 'shadow-importance'"):
        pt.check_arm_label(args, dllm)
    # each switch, by its flag or (without one here) its --dllm-option: the label names what the engine config runs
    plain = pt.parse_args(['random', str(tmp_path)])
    for option in (o for o in OPTIONS if o.is_switch):
        given = [option.flag] if hasattr(plain, option.field) else ['--dllm-option', f'{option.name}=True']
        args = pt.parse_args(['random', str(tmp_path), *given])
        pt.validate(args)
        runs = PytorchEngineConfig(**engine_runner.engine_config_kwargs(args, 64, dllm)).focus_options()
        label = pt.default_arm(args, dllm)
        assert label.startswith('shadow-') == runs.focus_shadow, (given, label)
        assert label.startswith('focus-') == (runs.enable_focus and not runs.focus_shadow), (given, label)
        assert (label == 'stock') == (not runs.uses_sparse_decode), (given, label)
        args.arm = label + '-static'
        pt.check_arm_label(args, dllm)  # a label default_arm gives is one the check knows


def test_a_budget_or_output_folder_that_cannot_work_is_refused_before_the_run(tmp_path):
    pt = _load_profile_throughput()
    with pytest.raises(BenchmarkInputError, match='--max-new-tokens must be >= 1, got -5'):
        pt.validate(pt.parse_args(['random', str(tmp_path), '--max-new-tokens', '-5']))
    blocked = tmp_path / 'a_file'
    blocked.write_text('')
    with pytest.raises(BenchmarkInputError, match='--output-dir .* cannot be created'):
        pt.validate(pt.parse_args(['random', str(tmp_path), '--output-dir', str(blocked)]))


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='the message of a machine without CUDA')
def test_no_hub_download_on_a_machine_without_cuda(tmp_path, monkeypatch):
    """The drivers' default model is a hub id: it was fetched (16 GB) before the engine said it needs a GPU."""
    import lmdeploy.utils
    pt = _load_profile_throughput()
    fetched = []
    monkeypatch.setattr(lmdeploy.utils, 'get_model', lambda name: fetched.append(name) or str(tmp_path))
    with pytest.raises(BenchmarkInputError, match='checked before fetching JetLM/SDAR-8B-Chat-b32'):
        pt.main(['random', 'JetLM/SDAR-8B-Chat-b32', '--output-dir', str(tmp_path / 'out')])
    assert fetched == []


@pytest.mark.parametrize('driver', ['run_baseline_throughput_evaluation.sh', 'run_focus_throughput_evaluation.sh',
                                    'run_sdar_delayed_cache_benchmark.sh', 'run_block_size_comparison.sh'])
def test_a_driver_says_its_own_usage_and_refuses_a_switch_that_is_not_0_or_1(tmp_path, driver):
    """--help went on as the dataset (profile_throughput's usage, four times, and results logs); DRY_RUN=true ran the
    real benchmark, EAGER_MODE=yes was silently off. Found by a drivers hunt."""
    proc = subprocess.run(['bash', _driver(driver), '--help'], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    header = open(_driver(driver)).read().splitlines()[1].lstrip('# ')
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == header, proc.stdout[:300]
    assert 'usage: profile_throughput' not in proc.stdout and not (tmp_path / 'results').exists()
    for switch in ('DRY_RUN', 'EAGER_MODE', 'ONE_ENGINE', 'PAPER_THRESHOLDS', 'REPEAT_GUARD'):
        proc = subprocess.run(['bash', _driver(driver), 'random'], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path, env=dict(os.environ, **{switch: 'yes'}))
        assert proc.returncode == 2 and proc.stderr.strip() == f'{switch}=yes: 0 or 1', (switch, proc.stderr)


def test_plots_know_every_label_a_run_gets():
    """A label profile_throughput gives that plot_results does not know is plotted as its own base with no stock
    reference found by tag (the shadow labels were new)."""
    sys.path.insert(0, BENCH)
    try:
        import plot_results as plots
    finally:
        sys.path.remove(BENCH)
    pt = _load_profile_throughput()
    assert set(pt.ARM_LABELS) <= set(plots.ARM_BASES)
    assert all(plots.arm_base(f'{label}-static') == label for label in pt.ARM_LABELS)


def test_saved_settings_are_json_with_focus_flags_given():
    """The FOCUS flags record which were given in a set on the namespace: the result JSON must not carry it."""
    pt = _load_profile_throughput()
    args = pt.parse_args(['random', '/m', '--dllm-enable-focus', '--dllm-focus-policy', 'leftmost'])
    settings = json.loads(json.dumps(pt.saved_settings(args)))
    assert settings['dllm_enable_focus'] is True and settings['dllm_focus_policy'] == 'leftmost'
    assert 'model_path' not in settings and not any(key.startswith('_') for key in settings)
