"""benchmark/kernel_table.py: kernel totals from a chrome trace, and one trace minus another."""
import gzip
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import BENCHMARK_DIR as BENCH, load_benchmark_script


def _kernel_table():
    return load_benchmark_script('kernel_table')


def _trace(kernels, rng):
    """A chrome trace holding ``kernels`` ((name, µs) pairs) among CPU ops, runtime calls and counters."""
    events = []
    for name, dur in kernels:
        events.append(dict(ph='X', cat='kernel', name=name, dur=dur, ts=rng.random()))
        events.append(dict(ph='X', cat='cuda_runtime', name='cudaLaunchKernel', dur=rng.random() * 9))
        events.append(dict(ph='X', cat='cpu_op', name='aten::' + name, dur=rng.random() * 9))
    events.append(dict(ph='i', cat='kernel', name='not a duration event', s='t'))
    rng.shuffle(events)
    return dict(traceEvents=events, displayTimeUnit='ms')


def test_totals_and_difference_match_a_direct_count(tmp_path):
    rng = random.Random()
    names = [f'k{i}' for i in range(rng.randint(3, 8))]
    a = [(rng.choice(names), float(rng.randint(1, 50))) for _ in range(rng.randint(20, 60))]
    b = [(rng.choice(names[:-1]), float(rng.randint(1, 50))) for _ in range(rng.randint(20, 60))]
    kt = _kernel_table()
    ta, tb = kt.kernel_totals(_trace(a, rng)), kt.kernel_totals(_trace(b, rng))
    for name in names:
        assert ta.get(name, (0.0, 0)) == (sum(d for n, d in a if n == name), sum(1 for n, _ in a if n == name))
    per = rng.randint(1, 7)
    rows = kt.table(ta, tb, per=per, top=100)
    assert {r['name'] for r in rows} == set(ta) | set(tb)
    for r in rows:
        us = sum(d for n, d in a if n == r['name']) - sum(d for n, d in b if n == r['name'])
        launches = sum(n == r['name'] for n, _ in a) - sum(n == r['name'] for n, _ in b)
        assert r['us'] == pytest.approx(us / per) and r['launches'] == pytest.approx(launches / per)
    assert [abs(r['us']) for r in rows] == sorted((abs(r['us']) for r in rows), reverse=True)
    head = kt.summary(ta, tb, per)
    assert head['diff_us'] == pytest.approx((sum(d for _, d in a) - sum(d for _, d in b)) / per)
    assert head['diff_launches'] == pytest.approx((len(a) - len(b)) / per)
    with pytest.raises(ValueError, match='--per'):
        kt.table(ta, per=0)


def test_cli_reads_gzip_traces_and_writes_json(tmp_path):
    rng = random.Random()
    paths = []
    for label, kernels in (('a', [('gemm', 10.0), ('gemm', 12.0), ('focus_select', 3.0)]), ('b', [('gemm', 11.0)])):
        path = tmp_path / f'trace_{label}.json.gz'
        with gzip.open(path, 'wt') as f:
            json.dump(_trace(kernels, rng), f)
        paths.append(str(path))
    out = tmp_path / 'table.json'
    run = subprocess.run([sys.executable, os.path.join(BENCH, 'kernel_table.py'), paths[0], '--minus', paths[1],
                          '--per', '2', '--json', str(out)], capture_output=True, text=True, check=True)
    assert 'focus_select' in run.stdout
    result = json.loads(out.read_text())
    by_name = {r['name']: r for r in result['rows']}
    assert by_name['gemm']['us'] == pytest.approx((22.0 - 11.0) / 2) and by_name['gemm']['launches'] == 0.5
    assert by_name['focus_select']['us'] == pytest.approx(1.5)
    assert result['summary']['diff_us'] == pytest.approx((25.0 - 11.0) / 2)


def test_busy_and_idle_time_is_the_union_of_kernel_intervals():
    rng = random.Random()
    kt = _kernel_table()
    # random intervals on a grid, overlapping ones included (kernels on several streams)
    intervals = []
    for _ in range(rng.randint(5, 40)):
        start = rng.randint(0, 400)
        intervals.append((start, start + rng.randint(1, 30)))
    events = [dict(ph='X', cat='kernel', name='k', ts=float(lo), dur=float(hi - lo)) for lo, hi in intervals]
    events.append(dict(ph='X', cat='cpu_op', name='aten::add', ts=-50.0, dur=1000.0))  # not a kernel
    rng.shuffle(events)
    max_gap = rng.randint(1, 20)
    busy, span = kt.busy_and_span(dict(traceEvents=events), max_gap_us=max_gap)
    covered = set()
    for lo, hi in intervals:
        covered.update(range(lo, hi))
    assert busy == pytest.approx(len(covered))
    # idle: the uncovered unit slots inside the span, counting only gaps of at most max_gap units
    first, last = min(lo for lo, _ in intervals), max(hi for _, hi in intervals)
    idle, run = 0, 0
    for t in range(first, last + 1):
        if t in covered or t == last:
            idle += run if run <= max_gap else 0
            run = 0
        else:
            run += 1
    assert span - busy == pytest.approx(idle)
    head = kt.summary(kt.kernel_totals(dict(traceEvents=events)), per=2, busy_span=(busy, span))
    assert head['busy_us'] == pytest.approx(busy / 2) and head['idle_us'] == pytest.approx((span - busy) / 2)
    assert kt.busy_and_span(dict(traceEvents=[])) == (0.0, 0.0)


@pytest.mark.parametrize('top', [5, 200])  # under and over the 8-KiB stdout buffer
@pytest.mark.parametrize('unbuffered', ['1', ''])
@pytest.mark.parametrize('reader', ['head -1', 'true'])  # reads a line, or closes the pipe without reading
def test_json_is_written_even_when_the_reader_closes_the_pipe_early(tmp_path, unbuffered, reader, top):
    """kernel_profile.sh pipes the table into ``head``: the JSON must still be written and the script's own exit
    status be 0, with or without buffered output (the 2026-12-06 profile lost its JSON files to a BrokenPipeError
    raised before they were written)."""
    rng = random.Random()
    path = tmp_path / 'trace.json'
    path.write_text(json.dumps(_trace([(f'k{i}', float(rng.randint(1, 9))) for i in range(200)], rng)))
    out = tmp_path / 'table.json'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}
    if unbuffered:
        env['PYTHONUNBUFFERED'] = unbuffered
    run = subprocess.run(f'{sys.executable} {os.path.join(BENCH, "kernel_table.py")} {path} --top {top} --json {out} '
                         f'| {reader}; exit ${{PIPESTATUS[0]}}', shell=True, capture_output=True, text=True,
                         executable='/bin/bash', env=env)
    assert run.returncode == 0 and 'BrokenPipe' not in run.stderr and 'Traceback' not in run.stderr, run.stderr
    assert len(json.loads(out.read_text())['rows']) == top
