"""CPU tests of benchmark/profile_throughput.py: dataset loading, prompt sampling, repetition guard,
metrics, reports, the async runner against a fake engine, and one-line CLI errors. No GPU."""
import asyncio
import csv
import json
import os
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

    from lmdeploy_focus.tools.qwen3_tokenizer import write_qwen3_tokenizer_files
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
