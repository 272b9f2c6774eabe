"""CPU tests of benchmark/eval_quality.py: task file and its one-line errors, scorers, arms and their
engine configs, decode-statistics ratios, the engine backend against a fake engine, and the reference
backend end to end on a random tiny SDAR checkpoint. No GPU."""
import asyncio
import json
import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'benchmark')
SCRIPT = os.path.join(BENCH, 'eval_quality.py')

sys.path.insert(0, BENCH)
from quality import arms, decode_stats, report, scorers  # noqa: E402
from quality.engine_backend import EngineBackend  # noqa: E402
from quality.task_file import TaskFileError, load_tasks  # noqa: E402
from throughput import engine_runner  # noqa: E402
from throughput.prompts import Prompt  # noqa: E402

sys.path.remove(BENCH)


def _write_lines(path, lines) -> str:
    path.write_text('\n'.join(line if isinstance(line, str) else json.dumps(line) for line in lines) + '\n')
    return str(path)


# ---------------------------------------------------------------- task file
def test_task_file_kinds_defaults_and_options(tmp_path):
    path = _write_lines(tmp_path / 't.jsonl', [
        {'prompt': 'What is 6*7?', 'answer': '42'},
        '',
        {'prompt': 'Go on: once upon', 'reference': ' a time', 'max_new_tokens': 16, 'id': 'story'},
        {'prompt': 'Sum?', 'answer': '#### 1,024', 'scorer': 'numeric', 'meta': {'source': 'gsm8k'}},
    ])
    tasks = load_tasks(path)
    assert [t.line for t in tasks] == [1, 3, 4]
    assert (tasks[0].kind, tasks[0].scorer, tasks[0].max_new_tokens) == ('answer', 'exact_strip', None)
    assert (tasks[1].kind, tasks[1].scorer, tasks[1].max_new_tokens, tasks[1].id) == \
        ('reference', 'prefix_chars:64', 16, 'story')
    assert tasks[2].meta == {'source': 'gsm8k'}
    assert tasks[0].score(' 42\n') == 1.0 and tasks[2].score('so the total is 1024.') == 1.0


@pytest.mark.parametrize('line,needle', [
    ('{"prompt": "x", "answer": "y"', 'not valid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ({'answer': 'y'}, '"prompt" must be a non-empty string'),
    ({'prompt': '  ', 'answer': 'y'}, '"prompt" must be a non-empty string'),
    ({'prompt': 'x'}, 'exactly one of "answer" or "reference"'),
    ({'prompt': 'x', 'answer': 'y', 'reference': 'z'}, 'exactly one of'),
    ({'prompt': 'x', 'answer': 3}, '"answer" must be a string'),
    ({'prompt': 'x', 'anwser': 'y'}, "unknown key(s) ['anwser']"),
    ({'prompt': 'x', 'answer': 'y', 'scorer': 'fuzzy'}, "unknown scorer 'fuzzy'"),
    ({'prompt': 'x', 'answer': 'y', 'scorer': 'prefix_chars:0'}, 'character count >= 1'),
    ({'prompt': 'x', 'answer': 'none', 'scorer': 'numeric'}, 'holds no number'),
    ({'prompt': 'x', 'answer': ' ', 'scorer': 'contains'}, 'non-blank target'),
    ({'prompt': 'x', 'answer': 'y', 'max_new_tokens': 0}, '"max_new_tokens" must be an integer >= 1'),
    ({'prompt': 'x', 'answer': 'y', 'max_new_tokens': True}, '"max_new_tokens" must be an integer >= 1'),
    ({'prompt': 'x', 'answer': 'y', 'id': [1]}, '"id" must be a string or an integer'),
])
def test_bad_line_is_one_line_naming_file_and_line(tmp_path, line, needle):
    path = _write_lines(tmp_path / 'bad.jsonl', [{'prompt': 'fine', 'answer': 'ok'}, line])
    with pytest.raises(TaskFileError) as err:
        load_tasks(path)
    message = str(err.value)
    assert message.startswith(f'{path}:2: ') and needle in message and '\n' not in message


def test_empty_and_missing_task_files(tmp_path):
    empty = _write_lines(tmp_path / 'empty.jsonl', ['', '  '])
    with pytest.raises(TaskFileError, match='no tasks'):
        load_tasks(empty)
    with pytest.raises(TaskFileError, match='cannot read task file'):
        load_tasks(str(tmp_path / 'absent.jsonl'))


def test_cli_bad_task_file_is_one_line_before_the_model_is_touched(tmp_path):
    path = _write_lines(tmp_path / 'bad.jsonl', [{'prompt': 'fine', 'answer': 'ok'}, {'prompt': 'x', 'answer': 1}])
    proc = subprocess.run([sys.executable, SCRIPT, path, str(tmp_path / 'no-model'), '--backend', 'reference'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err == [f'eval_quality: error: {path}:2: "answer" must be a string, got int'], proc.stderr


@pytest.mark.parametrize('case', ['missing model', 'cuda without a gpu'])
def test_reference_backend_inputs_are_one_line_before_anything_loads(tmp_path, case):
    """A path that is no model folder went to the hub client (~50 s of retries); --device cuda without a GPU was a
    traceback. Found by a newcomer run-through."""
    import torch
    if case == 'cuda without a gpu' and torch.cuda.is_available():
        pytest.skip('the message of a machine without CUDA')
    path = _write_lines(tmp_path / 't.jsonl', [{'prompt': 'p', 'answer': 'a'}])
    model = 'models/tiny-sdar' if case == 'missing model' else os.path.join(REPO, 'models', 'tiny-sdar-5m-b32')
    extra = ['--device', 'cuda'] if case == 'cuda without a gpu' else []
    proc = subprocess.run([sys.executable, SCRIPT, path, model, '--backend', 'reference', *extra, '--out-dir',
                           str(tmp_path / 'out')], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    needle = ("'models/tiny-sdar' is not a model folder" if case == 'missing model'
              else '--device cuda: no CUDA GPU here')
    assert proc.stderr.strip().splitlines()[-1].startswith(f'eval_quality: error: {needle}'), proc.stderr[-2000:]


# ---------------------------------------------------------------- scorers
def test_exact_scorers():
    assert scorers.get_scorer('exact')('42', '42') == 1.0
    assert scorers.get_scorer('exact')(' 42', '42') == 0.0
    assert scorers.get_scorer('exact_strip')(' 42\n', '42 ') == 1.0
    assert scorers.get_scorer('exact_strip')('4 2', '42') == 0.0


def test_numeric_scorer_and_final_number():
    score = scorers.get_scorer('numeric')
    assert scorers.final_number('a 1 b 2,500 c') == 2500
    assert scorers.final_number('so \\boxed{3/4} then 7') == 0.75  # \boxed wins over later numbers
    assert scorers.final_number('steps 12 and 13 #### 18') == 18
    assert scorers.final_number('no digits') is None
    assert score('The answer is 72.', '#### 72') == 1.0
    assert score('The answer is 72.0', '72') == 1.0
    assert score('-3', '3') == 0.0 and score('nothing', '3') == 0.0


def test_prefix_and_contains_scorers():
    prefix = scorers.get_scorer('prefix_chars:5')
    assert prefix('  Hello world', 'Hello there') == 1.0
    assert prefix('Help me', 'Hello there') == 0.0
    assert prefix('Hi, and more', ' Hi') == 1.0  # shorter target: the whole of it
    assert scorers.get_scorer('contains')('it is red.', ' red ') == 1.0
    assert scorers.get_scorer('contains')('it is blue.', 'red') == 0.0
    for bad in ('prefix_chars', 'prefix_chars:x', 'prefix_chars:-1', 'fuzzy', 3):
        with pytest.raises(scorers.ScorerError):
            scorers.get_scorer(bad)


# ---------------------------------------------------------------- arms
def test_arm_table():
    assert list(arms.ARMS) == ['stock', 'delayed_fast', 'delayed_exact', 'focus_a1.0', 'focus_a1.5', 'focus_a1.5_fast',
                               'focus_a2', 'focus_a3', 'focus_leftmost', 'focus_auto', 'focus_auto_leftmost', 'shadow']
    assert arms.check_arms(['stock', 'shadow', 'stock']) == ['stock', 'shadow']
    # the arm table's names (what the GPU scripts pass) resolve to the report's labels
    assert arms.check_arms(['focus-importance', 'focus-auto', 'focus', 'delayed']) == ['focus_a1.5', 'focus_auto',
                                                                                      'delayed_exact']
    assert arms.check_arms(['focus-importance-fast']) == ['focus_a1.5_fast']
    for bad in ('focus_a7', 'focus-leftmost-fast'):  # unknown anywhere / in the table but not an eval arm
        with pytest.raises(ValueError, match='unknown arm'):
            arms.check_arms([bad])


def test_arm_kwargs_build_valid_engine_configs():
    import lmdeploy
    settings = arms.RunSettings(block_length=32, concurrency=16, eager_mode=True)
    expected = {  # arm -> (delayed cache, commit, focus, alpha, policy, shadow) after the config resolved it
        'stock': (False, 'exact', False, 1.5, 'importance', False),
        'delayed_fast': (True, 'fast', False, 1.5, 'importance', False),
        'delayed_exact': (True, 'exact', False, 1.5, 'importance', False),
        'focus_a1.0': (True, 'exact', True, 1.0, 'importance', False),
        'focus_a1.5': (True, 'exact', True, 1.5, 'importance', False),
        'focus_a1.5_fast': (True, 'fast', True, 1.5, 'importance', False),
        'focus_a2': (True, 'exact', True, 2.0, 'importance', False),
        'focus_a3': (True, 'exact', True, 3.0, 'importance', False),
        'focus_leftmost': (True, 'exact', True, 1.5, 'leftmost', False),
        'focus_auto': (True, 'exact', True, 'auto', 'importance', False),
        'focus_auto_leftmost': (True, 'exact', True, 'auto', 'leftmost', False),
        'shadow': (True, 'exact', True, 1.5, 'importance', True),
    }
    for arm, want in expected.items():
        kwargs = arms.engine_config_kwargs(arm, 0.8, settings)
        assert kwargs['dllm_track'] is True and kwargs['dllm_confidence_threshold'] == 0.8
        assert (kwargs['max_batch_size'], kwargs['max_prefill_token_num'], kwargs['block_size']) == (16, 512, 64)
        assert (kwargs['dllm_block_length'], kwargs['dllm_denoising_steps']) == (32, 32)
        config = lmdeploy.PytorchEngineConfig(**kwargs)  # the plugin's subclass: FOCUS fields validated
        assert type(config).__module__.startswith('lmdeploy_focus'), type(config)
        runs = config.focus_options()  # what the engine runs (the fields keep what was given)
        got = (runs.enable_delayed_cache, runs.delayed_cache_commit, runs.enable_focus, runs.focus_alpha,
               runs.focus_policy, runs.focus_shadow)
        assert got == want, arm
        assert config.hf_overrides['dllm_focus']['track'] is True  # reaches the engine process
        assert arms.focus_options(arm) == config.focus_options()
    stock = arms.engine_config_kwargs('stock', None, arms.RunSettings(block_length=None))
    assert 'dllm_confidence_threshold' not in stock and 'dllm_block_length' not in stock
    assert stock['max_prefill_token_num'] == 64 * engine_runner.AR_SIZING_BLOCK


# ---------------------------------------------------------------- decode statistics
STATS = dict(decode_steps=100, generated_tokens=250, processed_tokens=1600, deep_tokens=900, candidates=1200,
             kept_candidates=500, shadow_decoded=200, shadow_selected_decoded=150, shadow_random_expected=80)


def test_ratios_from_a_stats_dict():
    r = decode_stats.derive(STATS, num_requests=4)
    assert set(r) == set(decode_stats.RATIO_KEYS)
    assert r['generated_per_step'] == 2.5 and r['steps_per_request'] == 25
    assert r['processed_per_generated'] == 900 / 250 and r['layer0_processed_per_generated'] == 1600 / 250
    assert r['kept_fraction'] == 500 / 1200
    assert r['shadow_recall'] == 0.75 and r['random_recall'] == 0.4


def test_ratios_without_stats_or_denominators():
    assert all(v is None for v in decode_stats.derive(None, 3).values())
    partial = dict(STATS, candidates=0, shadow_decoded=0, kept_candidates=None)
    r = decode_stats.derive(partial, 0)
    assert r['kept_fraction'] is None and r['shadow_recall'] is None and r['steps_per_request'] is None
    assert r['generated_per_step'] == 2.5


def test_read_engine_stats_none_and_values(monkeypatch):
    calls = []
    fake = types.ModuleType('lmdeploy_focus.stats')
    fake.read_run_stats = lambda reset=True: calls.append(reset)
    monkeypatch.setitem(sys.modules, 'lmdeploy_focus.stats', fake)
    stats, note = decode_stats.read_engine_stats()
    assert stats is None and 'no DLLM run statistics' in note and calls == [True]
    fake.read_run_stats = lambda reset=True: dict(STATS)
    assert decode_stats.read_engine_stats() == (STATS, None)


# ---------------------------------------------------------------- engine backend (fake engine)
class _FakeInstance:

    def __init__(self, engine):
        self.engine = engine

    async def async_stream_infer(self, session_id, input_ids, gen_config):
        from lmdeploy.messages import EngineOutput, ResponseType
        out = self.engine.answer(input_ids)[:gen_config.max_new_tokens]
        for i in range(0, len(out), 2):  # two tokens per streamed output, the last one FINISH
            await asyncio.sleep(0)
            last = i + 2 >= len(out)
            yield EngineOutput(ResponseType.FINISH if last else ResponseType.SUCCESS, out[i:i + 2])


class _FakeEngine:

    def __init__(self, answer):
        self.answer, self.started, self.closed = answer, False, False

    def start_loop(self):
        self.started = True

    def create_instance(self):
        return _FakeInstance(self)

    def close(self):
        self.closed = True


def test_engine_backend_cells_missing_and_stats():
    engines = []

    def build(model_path, kwargs):
        if kwargs.get('dllm_enable_focus'):
            raise engine_runner.ArmMissing('FOCUS eviction is not implemented yet')
        if kwargs.get('dllm_delayed_cache_commit') == 'fast':
            raise RuntimeError('CUDA out of memory\nmore detail')
        # delayed cache changes the last token of every output
        engines.append(_FakeEngine(lambda ids: [t + 1 for t in ids] + ([7] if kwargs.get('dllm_enable_delayed_cache')
                                                                        else [8])))
        return engines[-1]

    stats_calls = []

    def read_stats(reset=True):
        stats_calls.append(reset)
        return (dict(STATS), None) if len(stats_calls) % 2 == 0 else (None, 'reset')

    settings = arms.RunSettings(block_length=4, concurrency=2)
    backend = EngineBackend('/ckpt/SDAR-b4', settings, [2], build_engine=build, read_stats=read_stats, progress=False)
    prompts = [Prompt([10, 11, 12], 8), Prompt([20, 21], 8), Prompt([30], 2)]
    outcomes = [backend.run_cell(arm, 0.9, prompts) for arm in ('stock', 'delayed_exact', 'delayed_fast', 'focus_a2')]
    stock, exact, fast, focus = outcomes
    assert stock.status == 'ok' and stock.token_ids == [[11, 12, 13, 8], [21, 22, 8], [31, 8]]
    assert exact.token_ids[0] == [11, 12, 13, 7] and stock.stats == STATS and stock.errors == [None] * 3
    assert all(e.started and e.closed for e in engines) and stats_calls == [True] * 4
    assert (fast.status, fast.reason) == ('failed', 'RuntimeError: CUDA out of memory')
    assert (focus.status, focus.reason) == ('missing', 'FOCUS eviction is not implemented yet')
    assert focus.config['engine_config']['dllm_focus_alpha'] == 2.0 and focus.config['focus_options']['enable_focus']

    # scored from the outputs: the answers are stock's outputs as text
    tasks = [types.SimpleNamespace(line=i + 1, id=None, score=(lambda out, want=want: float(out == want)))
             for i, want in enumerate(['11 12 13 8', '21 22 8', 'wrong'])]

    def decode(ids):
        return ' '.join(map(str, ids))

    base = report.baselines(outcomes)
    cells = [report.cell_record(o, tasks, prompts, decode, base.get(o.threshold)) for o in outcomes]
    assert cells[0]['summary']['accuracy_pct'] == pytest.approx(200 / 3)
    assert cells[0]['summary']['same_as_stock_pct'] is None and cells[1]['summary']['same_as_stock_pct'] == 0.0
    assert cells[1]['summary']['accuracy_pct'] == 0.0
    assert cells[0]['summary']['hit_max_new_tokens'] == 1 and cells[0]['summary']['output_tokens'] == 9
    assert cells[0]['summary']['shadow_recall'] == 0.75 and cells[0]['summary']['steps_per_request'] == 100 / 3
    assert cells[3]['summary'] is None and cells[3]['tasks'] == []


# ---------------------------------------------------------------- reference backend, end to end on CPU
@pytest.fixture(scope='module')
def tiny_sdar(tmp_path_factory):
    from lmdeploy_focus_dev.tools.random_checkpoint import write_random_checkpoint
    return str(write_random_checkpoint('tiny-sdar', tmp_path_factory.mktemp('ckpt') / 'tiny-sdar-b4', seed=0,
                                       dtype='float32', device='cpu'))


def _run_main(argv) -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location('eval_quality_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_checkpoint_loader_reads_the_tiny_sdar(tiny_sdar):
    import torch

    from lmdeploy_focus_dev.reference.checkpoint import load_sdar_checkpoint, safetensors_files
    assert len(safetensors_files(tiny_sdar)) == 3
    ckpt = load_sdar_checkpoint(tiny_sdar, dtype=torch.float64)
    assert ckpt.mask_token_id == 151669 and ckpt.model.dtype == torch.float64
    assert ckpt.model.dims.num_layers == 2 and ckpt.model.dims.vocab_size == 151936


def test_reference_backend_end_to_end(tiny_sdar, tmp_path):
    prompts = ['What is 2+2?', 'Name a colour.', 'Continue: the quick brown fox']
    first = _write_lines(tmp_path / 'probe.jsonl', [{'prompt': p, 'answer': 'nothing like this'} for p in prompts])
    common = ['--backend', 'reference', '--max-new-tokens', '4', '--thresholds', '0.9', '--quiet',
              '--out-dir', str(tmp_path / 'out')]
    run = _run_main([first, tiny_sdar, '--arms', 'stock', 'delayed_fast', 'focus_a1.5', 'focus-auto', '--save-token-ids',
                     *common])

    assert run['schema'] == report.SCHEMA and run['backend'] == 'reference' and run['num_tasks'] == 3
    assert run['settings']['block_length'] == 4 and run['settings']['chat_template'] is True
    assert {'torch', 'lmdeploy', 'lmdeploy_focus', 'gpu', 'device'} <= set(run['environment'])
    assert [(c['arm'], c['threshold']) for c in run['cells']] == [('stock', 0.9), ('delayed_fast', 0.9),
                                                                   ('focus_a1.5', 0.9), ('focus_auto', 0.9)]
    auto = run['cells'][3]  # one controller over the cell; the first sequence measures its first step
    assert auto['status'] == 'ok' and auto['config']['focus_options']['focus_alpha'] == 'auto'
    assert auto['config']['auto_alpha']['shadow_steps'] > 0
    stock = run['cells'][0]
    assert stock['status'] == 'ok' and stock['summary']['accuracy_pct'] == 0.0
    assert all(t['output_tokens'] == 4 for t in stock['tasks'])  # random weights never emit EOS here
    s = stock['summary']
    assert s['steps_per_request'] > 0 and s['generated_per_step'] > 0
    assert s['processed_per_generated'] == s['layer0_processed_per_generated'] >= 1  # no eviction
    assert s['kept_fraction'] is None and s['shadow_recall'] is None
    assert [c['status'] for c in run['cells']] == ['ok'] * 4, [c.get('reason') for c in run['cells']]
    for cell in run['cells'][1:]:  # agreement with stock, from the outputs
        assert len(cell['tasks']) == 3
        same = sum(a['token_ids'] == b['token_ids'] for a, b in zip(cell['tasks'], stock['tasks']))
        assert cell['summary']['same_as_stock_pct'] == pytest.approx(100.0 * same / 3)
    stem = os.path.join(tmp_path / 'out', 'quality_reference_tiny-sdar-b4_probe')
    assert json.load(open(stem + '.json'))['cells'][0]['tasks'][0]['output'] == stock['tasks'][0]['output']
    md = open(stem + '.md').read()
    assert '| stock | 0.9 | ok | 0.0 | 3 |' in md and '| focus_a1.5 | 0.9 |' in md

    # answers = what stock produced: stock scores 100% (exact, exact_strip and prefix_chars scorers)
    outputs = [t['output'] for t in stock['tasks']]
    second = _write_lines(tmp_path / 'answers.jsonl', [
        {'prompt': prompts[0], 'answer': outputs[0], 'scorer': 'exact'},
        {'prompt': prompts[1], 'answer': outputs[1]},
        {'prompt': prompts[2], 'reference': outputs[2]},
    ])
    rerun = _run_main([second, tiny_sdar, '--arms', 'stock', 'delayed_exact', *common])
    stock2, exact2 = rerun['cells']
    assert stock2['status'] == exact2['status'] == 'ok' and len(exact2['tasks']) == 3, exact2.get('reason')
    assert stock2['summary']['accuracy_pct'] == 100.0 and stock2['summary']['correct'] == 3
    got = [t['output'] for t in exact2['tasks']]
    expected = [scorers.get_scorer(name)(out, want) for name, out, want in
                zip(('exact', 'exact_strip', 'prefix_chars:64'), got, outputs)]
    assert [t['score'] for t in exact2['tasks']] == expected


# ---------------------------------------------------------------- a newcomer's first run (issue 16)
def _load_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location('eval_quality_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backend_auto_takes_the_reference_loop_without_cuda_and_help_says_so(monkeypatch):
    import torch
    module = _load_script()
    args = module.parse_args(['tasks.jsonl', 'model'])
    assert args.backend == 'auto' and args.out_dir is None
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert module.resolve_backend('auto') == 'reference'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert module.resolve_backend('auto') == 'engine' and module.resolve_backend('reference') == 'reference'
    proc = subprocess.run([sys.executable, SCRIPT, '--help'], capture_output=True, text=True, timeout=300)
    text = ' '.join(proc.stdout.split())
    assert 'auto: engine when CUDA is available, else reference' in text and '(default: auto)' in text
    assert 'fills the kept / shadow-recall columns from its own counts' in text  # it once said n/a, stale


def test_default_out_dir_is_under_benchmark_results_not_the_cwd():
    import datetime
    module = _load_script()
    out = module.default_out_dir()
    assert out == os.path.join(os.path.dirname(SCRIPT), 'results', 'quality', datetime.date.today().isoformat())


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='the engine backend runs where CUDA is')
def test_explicit_engine_backend_without_cuda_is_one_line(tmp_path):
    path = _write_lines(tmp_path / 't.jsonl', [{'prompt': 'p', 'answer': 'a'}])
    ckpt = tmp_path / 'tiny-b4'
    from lmdeploy_focus_dev.tools.random_checkpoint import write_metadata_files
    from lmdeploy_focus_dev.tools.arch_specs import get_arch_spec
    ckpt.mkdir()
    write_metadata_files(get_arch_spec('tiny-sdar'), ckpt)  # the tokenizer is read before the backend
    proc = subprocess.run([sys.executable, SCRIPT, path, str(ckpt), '--backend', 'engine', '--out-dir',
                           str(tmp_path / 'out')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ('eval_quality: error: --backend engine needs a CUDA GPU (none is '
                                                    'available here): use --backend reference (or auto)')


def test_a_cell_that_ends_the_process_still_leaves_the_finished_cells_on_disk(tiny_sdar, tmp_path, monkeypatch):
    # upstream's environment check ends the process (SystemExit(1)) inside a cell: the report of the
    # cells that finished is written before the run exits with one line naming the cell
    from quality.reference_backend import ReferenceBackend
    upstream_run_cell = ReferenceBackend.run_cell

    def run_cell(self, arm, threshold, prompts):
        if arm == 'delayed_exact':
            print('PyTorch is not available.')
            raise SystemExit(1)
        return upstream_run_cell(self, arm, threshold, prompts)

    monkeypatch.setattr(ReferenceBackend, 'run_cell', run_cell)
    path = _write_lines(tmp_path / 'probe.jsonl', [{'prompt': 'What is 2+2?', 'answer': '4'}])
    with pytest.raises(SystemExit) as stop:
        _run_main([path, tiny_sdar, '--backend', 'reference', '--max-new-tokens', '4', '--thresholds', '0.9',
                   '--quiet', '--arms', 'stock', 'delayed_exact', 'delayed_fast', '--out-dir', str(tmp_path / 'out')])
    stem = os.path.join(tmp_path / 'out', 'quality_reference_tiny-sdar-b4_probe')
    assert str(stop.value) == ('eval_quality: error: the run stopped at delayed_exact @ 0.9 (exited with status 1; '
                               f'the run stopped here); the cells before it are in {stem}.json')
    cells = json.load(open(stem + '.json'))['cells']
    assert [(c['arm'], c['status']) for c in cells] == [('stock', 'ok'), ('delayed_exact', 'failed'),
                                                        ('delayed_fast', 'not run')]
    assert cells[0]['tasks'][0]['output_tokens'] == 4
    md = open(stem + '.md').read()
    assert '| stock | 0.9 | ok |' in md and '| delayed_fast | 0.9 | not run |' in md


def test_reference_focus_cells_fill_the_engine_columns(tiny_sdar, tmp_path):
    """The reference loop's FOCUS cells report what the engine's dllm_track would: kept fraction for every
    FOCUS arm, shadow / random recall only over steps that evicted nothing (shadow mode, auto's shadow steps)."""
    prompts = ['Name a colour.', 'What is 2+2?', 'Continue: the quick brown fox']
    path = _write_lines(tmp_path / 'probe.jsonl', [{'prompt': p, 'answer': 'red'} for p in prompts])
    run = _run_main([path, tiny_sdar, '--backend', 'reference', '--max-new-tokens', '12', '--thresholds', '0.9',
                     '--quiet', '--arms', 'stock', 'focus_a1.5', 'shadow', 'focus-auto', '--out-dir',
                     str(tmp_path / 'out')])
    cells = {c['arm']: c for c in run['cells']}
    assert all(c['status'] == 'ok' and c['decode_stats_note'] is None for c in cells.values())
    stock, focus, shadow, auto = (cells[a]['summary'] for a in ('stock', 'focus_a1.5', 'shadow', 'focus_auto'))
    assert stock['kept_fraction'] is None and stock['shadow_recall'] is None
    assert 0 < focus['kept_fraction'] <= 1 and focus['shadow_recall'] is None  # it evicts: no shadow step
    assert shadow['kept_fraction'] == 1.0 and 0 <= shadow['shadow_recall'] <= 1
    assert shadow['random_recall'] is not None
    # auto starts on probation: nothing evicted, and its shadow steps measure
    assert auto['kept_fraction'] == 1.0 and auto['shadow_recall'] is not None
    assert 'decode stats (' not in report.format_table(run)  # no column to explain away
