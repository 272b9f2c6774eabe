"""benchmark/flop_ideal.py: the row-layer ideal and the measured ratios against the same-run stock record."""
import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmark')
SCHEMA = 'lmdeploy-focus/profile_throughput/1'


def _flop_ideal():
    spec = importlib.util.spec_from_file_location('flop_ideal', os.path.join(BENCH, 'flop_ideal.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the module puts benchmark/ on sys.path itself, for plot_results
    return mod


def _record(arm, tok_s, tpot, dm, bs=64, date='2026-12-06T00:00:00', input_tokens=None):
    metrics = {'output_tok_per_s': tok_s, 'tpot_ms': {'mean': tpot}, 'completed': bs,
               'input_tokens': 256 * bs if input_tokens is None else input_tokens}
    return {'schema': SCHEMA, 'arm': arm, 'status': 'ok', 'model': '/tmp/ckpt/M', 'dataset': 'random',
            'concurrency': bs, 'date': date, 'settings': {'dllm_block_length': 32},
            'metrics': metrics, 'dllm_metrics': dict(dm, status='ok')}


def test_ideal_and_ratios_follow_the_row_layer_formula(tmp_path):
    rng = random.Random()
    layers, head = rng.randint(4, 40), rng.uniform(0.5, 4.0)
    gen = rng.randint(100, 1000)
    stock_rows, l0, deep, kept = (rng.randint(gen, 40 * gen) for _ in range(4))
    prompt_tokens = rng.randint(64, 20 * gen)
    stock = _record('stock-x', 1000.0, 50.0, {'generated_tokens': gen, 'processed_tokens': stock_rows},
                    input_tokens=prompt_tokens)
    focus = _record('focus-importance-x', 2500.0, 20.0, {'generated_tokens': gen, 'layer0_tokens': l0,
                                                           'deep_tokens': deep, 'kept_candidates': kept},
                    input_tokens=prompt_tokens)
    other_run = _record('stock-x', 10.0, 1.0, {'generated_tokens': gen, 'processed_tokens': 1})
    (tmp_path / 'run').mkdir(); (tmp_path / 'other').mkdir()
    for name, r in (('run/s.json', stock), ('run/f.json', focus), ('other/s.json', other_run)):
        (tmp_path / name).write_text(json.dumps(r))
    fi = _flop_ideal()
    qkv = rng.uniform(0.05, 0.3)
    [row] = fi.ideal_rows(fi.load_results([str(tmp_path / 'run'), str(tmp_path / 'other')]), layers, head, qkv=qkv)
    # layer 0 and layer 1's QKV on the processed rows; layer 1's attention + MLP and the deeper layers on the kept
    ideal = stock_rows * (layers + head) / (l0 * (1 + qkv) + deep * (layers - 1 - qkv) + kept * head)
    assert row['ideal'] == pytest.approx(ideal)
    assert row['measured_over_ideal'] == pytest.approx(2.5 / ideal)  # the same run's stock, not the other one
    assert row['decode_over_ideal'] == pytest.approx(2.5 / ideal)
    # the whole run: both arms also prefill the prompts (every layer, one LM-head row a request), which dilutes the ideal
    prompt = prompt_tokens * layers + 64 * head
    run_ideal = ((stock_rows * (layers + head) + prompt)
                 / (l0 * (1 + qkv) + deep * (layers - 1 - qkv) + kept * head + prompt))
    assert 1 < row['run_ideal'] < ideal or ideal <= 1
    assert row['run_ideal'] == pytest.approx(run_ideal)
    assert row['measured_over_run_ideal'] == pytest.approx(2.5 / run_ideal)


def test_run_ideal_needs_the_prompt_rows(tmp_path):
    stock = _record('stock-x', 1.0, 1.0, {'generated_tokens': 10, 'processed_tokens': 100})
    focus = _record('focus-leftmost-x', 2.0, 1.0, {'generated_tokens': 10, 'layer0_tokens': 100, 'deep_tokens': 40,
                                                   'kept_candidates': 20})
    del focus['metrics']['input_tokens']
    for name, r in (('s.json', stock), ('f.json', focus)):
        (tmp_path / name).write_text(json.dumps(r))
    fi = _flop_ideal()
    with pytest.raises(ValueError, match='input_tokens'):
        fi.ideal_rows(fi.load_results([str(tmp_path)]))


def test_reproduces_the_committed_runs():
    """BENCHMARKS.md's measured ÷ ideal: dynamic at out 256 in the row-bucket run with the formula of its time
    (layer 1 billed whole to the processed rows, qkv 1: 0.84 / 0.89 at bs 64 / 256), and the fourth graphs run
    with the current one (leftmost 0.83 / 0.88, dynamic 0.83 / 0.88)."""
    fi = _flop_ideal()
    results = os.path.join(BENCH, 'results')
    rows = fi.ideal_rows(fi.load_results([os.path.join(results, '2026-12-05_h100_row_buckets_dynamic256')]), qkv=1.0)
    got = {(r['arm'], r['concurrency']): round(r['measured_over_ideal'], 2) for r in rows}
    assert got[('focus-importance-dynamic', 64)] == 0.84 and got[('focus-importance-dynamic', 256)] == 0.89
    rows = fi.ideal_rows(fi.load_results([os.path.join(results, '2026-12-06_h100_first_step_average')]))
    got = {(r['arm'], r['concurrency']): round(r['measured_over_ideal'], 2) for r in rows}
    assert [got[('focus-leftmost-static', bs)] for bs in (64, 256)] == [0.83, 0.88]
    assert [got[('focus-importance-dynamic', bs)] for bs in (64, 256)] == [0.83, 0.88]
    # against the whole run's rows (the prompts' prefill in both arms): the bar's reading since 2026-12-06
    got = {(r['arm'], r['concurrency']): round(r['measured_over_run_ideal'], 2) for r in rows}
    assert [got[('focus-leftmost-static', bs)] for bs in (64, 256)] == [0.94, 0.99]
    assert [got[('focus-importance-dynamic', bs)] for bs in (64, 256)] == [0.89, 0.94]
    # the fifth graphs run (whole-block keys), the headline table: static and dynamic are separate runs
    fifth = os.path.join(results, '2026-12-06_h100_whole_block_keys')
    rows = [r for d in ('sdar8b_static', 'sdar8b_dynamic')
            for r in fi.ideal_rows(fi.load_results([os.path.join(fifth, d)]))]
    got = {(r['arm'], r['concurrency']): round(r['measured_over_run_ideal'], 2) for r in rows}
    assert [got[('focus-leftmost-static', bs)] for bs in (64, 256)] == [0.93, 0.99]
    assert [got[('focus-importance-static', bs)] for bs in (64, 256)] == [0.98, 1.00]
    assert [got[('focus-importance-dynamic', bs)] for bs in (64, 256)] == [0.88, 0.94]


def test_cli_refuses_a_run_without_stock(tmp_path):
    (tmp_path / 'f.json').write_text(json.dumps(_record('focus-leftmost', 1.0, 1.0, {'generated_tokens': 1})))
    p = subprocess.run([sys.executable, os.path.join(BENCH, 'flop_ideal.py'), str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode != 0 and 'no FOCUS record with a same-run stock record' in p.stderr


def test_ridge_rows_floors_each_phase_at_the_ridge_per_engine_step(tmp_path):
    rng = random.Random()
    layers, head, bs = rng.randint(4, 40), rng.uniform(0.5, 4.0), rng.choice([16, 32, 64])
    gen, steps_s, steps_f = rng.randint(500, 2000), rng.randint(100, 400), rng.randint(100, 400)
    stock_rows, l0, deep, kept = (rng.randint(gen, 40 * gen) for _ in range(4))
    ridge = rng.uniform(50, 2000)
    stock = _record('stock-x', 1000.0, 50.0, {'generated_tokens': gen, 'processed_tokens': stock_rows,
                                              'decode_steps': steps_s}, bs=bs)
    focus = _record('focus-leftmost-x', 2000.0, 25.0, {'generated_tokens': gen, 'layer0_tokens': l0, 'deep_tokens': deep,
                                                         'kept_candidates': kept, 'decode_steps': steps_f}, bs=bs)
    for name, r in (('s.json', stock), ('f.json', focus)):
        (tmp_path / name).write_text(json.dumps(r))
    fi = _flop_ideal()
    results = fi.load_results([str(tmp_path)])

    def floor(tokens, steps):  # row-layers with each engine step's rows (tokens / steps * bs) at least the ridge
        return steps / bs * max(tokens / steps * bs, ridge)

    qkv = fi.QKV_SHARE
    want = (floor(stock_rows, steps_s) * (layers + head)
            / (floor(l0, steps_f) * (1 + qkv) + floor(deep, steps_f) * (layers - 1 - qkv) + floor(kept, steps_f) * head))
    [row] = fi.ideal_rows(results, layers, head, ridge)
    assert row['ideal'] == pytest.approx(want) and row['measured_over_ideal'] == pytest.approx(2.0 / want)
    [plain] = fi.ideal_rows(results, layers, head, 0.0)
    assert plain['ideal'] == pytest.approx(stock_rows * (layers + head)
                                           / (l0 * (1 + qkv) + deep * (layers - 1 - qkv) + kept * head))
    # a record without decode_steps cannot be floored: a clear error, not a silent FLOP ideal
    del focus['dllm_metrics']['decode_steps']
    (tmp_path / 'f.json').write_text(json.dumps(focus))
    with pytest.raises(ValueError, match='decode_steps'):
        fi.ideal_rows(fi.load_results([str(tmp_path)]), layers, head, ridge)


# ---- records the profiler really writes for runs with nothing to measure (found by a bug-hunting review) --------


def _run_records(tmp_path, stock_chunks, focus_chunks, focus_dllm=True, stock_failed=False):
    """stock and focus-importance records through profile_throughput's own report and metrics code."""
    sys.path.insert(0, BENCH)
    from throughput import metrics, report

    def recs(chunks, failed=False):
        out = []
        for _ in range(8):
            r = metrics.RequestRecord(input_len=256, start=0.0)
            if failed:
                r.status = 'error'
            for k in range(chunks):
                r.add_chunk(0.1 * (k + 1), 32)
            r.end, r.output_len = 0.1 * max(chunks, 1), 32 * chunks
            out.append(r)
        return out

    dm = dict(generated_tokens=256, processed_tokens=2304, deep_tokens=900, layer0_tokens=1600, kept_candidates=300,
              decode_steps=72)
    for arm, chunks, failed, dllm in (('stock', stock_chunks, stock_failed, dm),
                                      ('focus-importance', focus_chunks, False, dm if focus_dllm else None)):
        record = report.result_record(arm=arm, status='ok', model='/tmp/ckpt/SDAR-8B-Chat-b32', dataset='random',
                                      concurrency=8, num_prompts=8, settings={'dllm_block_length': 32},
                                      engine_config={}, metrics=metrics.summarize(recs(chunks, failed), 1.0),
                                      dllm_metrics=dllm, env={'gpu': 'x'}, command='x')
        report.write_json(record, str(tmp_path))


@pytest.mark.parametrize('case', ['one_output_each', 'stock_failed', 'no_dllm_metrics'])
def test_the_tools_take_runs_with_nothing_to_measure(tmp_path, case):
    """One streamed output a request leaves TPOT / ITL None, a failed stock level 0 tok/s, a run without --dllm-track
    no counters: plot_results and flop_ideal ended in TypeError / ZeroDivisionError on each."""
    _run_records(tmp_path, stock_chunks=0 if case == 'stock_failed' else (1 if case == 'one_output_each' else 8),
                 focus_chunks=1 if case == 'one_output_each' else 8, focus_dllm=case != 'no_dllm_metrics',
                 stock_failed=case == 'stock_failed')
    plot = subprocess.run([sys.executable, os.path.join(BENCH, 'plot_results.py'), str(tmp_path), '--out-dir',
                           str(tmp_path), '--no-png'], capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0 and 'Traceback' not in plot.stderr, plot.stderr[-400:]
    table = (tmp_path / 'results.md').read_text()
    flop = subprocess.run([sys.executable, os.path.join(BENCH, 'flop_ideal.py'), str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert 'Traceback' not in flop.stderr, flop.stderr[-400:]
    if case == 'one_output_each':
        assert 'n/a' in table and flop.returncode == 0 and '| n/a | n/a |' in flop.stdout
    else:
        assert flop.returncode != 0 and 'left out focus-importance bs 8' in flop.stderr  # nothing left to compare
        assert ('no output throughput' if case == 'stock_failed' else 'no dllm_metrics') in flop.stderr


def test_bad_paths_are_one_line_naming_flop_ideal_and_the_file(tmp_path):
    """A missing path was a FileNotFoundError traceback, an empty folder said 'plot_results: error', a file that is
    not JSON did not name the file. Found by a newcomer run-through."""
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark', 'flop_ideal.py')
    not_json = tmp_path / 'notes.json'
    not_json.write_text('# not json')
    (tmp_path / 'empty').mkdir()
    for path, needle in ((tmp_path / 'nope', f'no such file or directory: {tmp_path / "nope"}'),
                         (not_json, f'{not_json}: not a readable JSON file'),
                         (tmp_path / 'empty', 'no profile_throughput JSON files in')):
        proc = subprocess.run([sys.executable, script, str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(f'flop_ideal: error: {needle}'), proc.stderr
