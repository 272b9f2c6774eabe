"""benchmark/serving_wall_time.py: the paired rounds' order, their ratios and the --arm parser."""
import argparse
import os
import random
import statistics
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmark'))
import serving_wall_time as swt  # noqa: E402

sys.path.pop(0)


def test_round_order_alternates_so_no_arm_always_goes_first():
    names = ['stock', 'focus', 'focus_nometrics']
    orders = [swt.round_order(names, i) for i in range(4)]
    assert orders[0] == names and orders[2] == names
    assert orders[1] == names[::-1] and orders[3] == names[::-1]
    for order in orders:
        assert sorted(order) == sorted(names)


def test_ratios_are_each_round_against_the_first_arm():
    rng = random.Random()
    rounds = rng.randint(2, 6)
    walls = {name: [rng.uniform(10, 30) for _ in range(rounds)] for name in ('stock', 'focus', 'other')}
    out = swt.summarize(['stock', 'focus', 'other'], walls)
    assert set(out) == {'focus', 'other'}
    for name in out:
        expected = [w / b for w, b in zip(walls[name], walls['stock'])]
        assert out[name]['round_ratios'] == pytest.approx(expected, abs=1e-3)
        assert out[name]['first_round_ratio'] == pytest.approx(expected[0], abs=1e-3)
        assert out[name]['median_ratio'] == pytest.approx(statistics.median(expected), abs=2e-3)
        assert out[name]['steady_median_ratio'] == pytest.approx(statistics.median(expected[1:]), abs=2e-3)


def test_one_round_has_no_steady_state_ratio():
    out = swt.summarize(['a', 'b'], {'a': [10.0], 'b': [12.5]})
    assert out['b']['round_ratios'] == [1.25] and out['b']['steady_median_ratio'] is None


def test_arm_parser_splits_name_environment_and_arguments_and_names_the_flag_on_error():
    assert swt.parse_arm('stock=') == ('stock', [], {})
    assert swt.parse_arm('focus=--focus --disable-metrics') == ('focus', ['--focus', '--disable-metrics'], {})
    assert swt.parse_arm('old=ENV:PYTHONPATH=/tmp/a:/tmp/b ENV:LMDEPLOY_FOCUS_AWAIT_STREAM=0 --focus') == (
        'old', ['--focus'], {'PYTHONPATH': '/tmp/a:/tmp/b', 'LMDEPLOY_FOCUS_AWAIT_STREAM': '0'})
    # only leading ENV: words are environment
    assert swt.parse_arm('a=--focus ENV:X=1') == ('a', ['--focus', 'ENV:X=1'], {})
    for bad in ('--focus', '=--focus', '', 'a=ENV:X', 'a=ENV:=1'):
        with pytest.raises(argparse.ArgumentTypeError, match='--arm'):
            swt.parse_arm(bad)


def test_results_carry_the_drivers_environment_record():
    env = swt.environment()
    assert {'torch', 'lmdeploy', 'lmdeploy_focus', 'python', 'gpu', 'git_commit'} <= set(env)
    assert env['lmdeploy'] == '0.18.0'


def test_dllm_counters_sum_each_counter_over_its_labels_and_skip_the_rest():
    rng = random.Random()
    steps = [rng.randint(0, 10**6) for _ in range(rng.randint(1, 3))]
    tokens = rng.uniform(0, 1e6)
    lines = ['# HELP lmdeploy:dllm_denoising_steps_total sequence-steps',
             '# TYPE lmdeploy:dllm_denoising_steps_total counter']
    lines += [f'lmdeploy:dllm_denoising_steps_total{{model_name="m",dp_rank="{i}"}} {v}.0' for i, v in enumerate(steps)]
    lines += [f'lmdeploy:dllm_generated_tokens_total{{model_name="m"}} {tokens!r}',
              'lmdeploy:dllm_generated_tokens_created{model_name="m"} 1.7e9',  # not a counter value
              'lmdeploy:dllm_request_kept_fraction_bucket{le="0.5"} 3.0',  # histogram
              'lmdeploy:num_requests_running{model_name="m"} 5.0']  # upstream's, not DLLM
    totals = swt.dllm_counters('\n'.join(lines) + '\n')
    assert totals == {'denoising_steps': float(sum(steps)), 'generated_tokens': pytest.approx(tokens)}
    assert swt.counter_delta({'denoising_steps': 2.0}, {'denoising_steps': 7.0, 'generated_tokens': 4.0}) == {
        'denoising_steps': 5.0, 'generated_tokens': 4.0}


def test_server_sampler_counts_only_while_the_flag_exists(tmp_path):
    """serving_profile/sitecustomize.py in a child process: no report before the window, one window's
    samples after it, attributed to what the main thread ran.

    Only relations that hold however loaded the machine is: the window opens once the watcher sees the
    flag (after the test creates it) and its report is written after the watcher sees the flag gone, so
    its wall time is positive and at most the time from creating the flag to reading the report; the
    sampler waits one interval before each sample, so samples <= wall_s / interval (+ slack); the child's
    main thread is inside ``busy_main_thread`` from before the flag until after the report, so every
    sample has it on the stack."""
    import json
    import subprocess
    import time
    ready, stop = tmp_path / 'ready', tmp_path / 'stop'
    child = ('import os, time\n'
             'def busy_main_thread(ready, stop):\n'
             '    open(ready, "w").close()\n'
             '    until = time.monotonic() + 120\n'
             '    while not os.path.exists(stop) and time.monotonic() < until:\n'
             '        sum(range(1000))\n'
             f'busy_main_thread({str(ready)!r}, {str(stop)!r})\n')
    env = dict(os.environ, FOCUS_HOST_SAMPLE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([swt.SAMPLER_DIR, os.environ.get('PYTHONPATH', '')]))

    def wait_for(condition, what, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            assert time.monotonic() < deadline, f'no {what} within {timeout_s} s'
            assert process.poll() is None, f'the child exited ({process.returncode}) before {what}'
            time.sleep(0.05)

    def complete_report():
        reports = list(tmp_path.glob('prof_*.json'))
        if not reports:
            return None
        try:  # the watcher may be writing it right now
            return reports, json.loads(reports[0].read_text())
        except json.JSONDecodeError:
            return None

    process = subprocess.Popen([sys.executable, '-c', child], env=env)
    try:
        wait_for(ready.exists, 'ready file')  # sitecustomize ran before this: the watcher thread is up
        time.sleep(0.5)  # the watcher polls every 0.05 s: several looks without the flag
        assert not list(tmp_path.glob('prof_*.json'))
        flag_on = time.monotonic()
        (tmp_path / 'on').touch()
        time.sleep(0.8)
        (tmp_path / 'on').unlink()
        reports, report = wait_for(complete_report, 'report')
        report_seen = time.monotonic()
        stop.touch()
        assert [p.name for p in reports] == [f'prof_{process.pid}.json']
        windows = report['windows']
        assert len(windows) == 1
        window = windows[0]
        assert 0 < window['wall_s'] <= report_seen - flag_on + 0.001  # wall_s is rounded to 1 ms
        assert 0 < window['samples'] <= window['wall_s'] / 0.002 + 5
        inclusive = dict((name, share) for name, share in window['top_inclusive'])
        assert inclusive.get('<string> busy_main_thread', 0) == 1.0
    finally:
        stop.touch()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0


def test_a_round_with_failed_requests_has_no_ratio():
    """An arm whose requests all failed fast read as a speed-up (ok [0, 0] next to a ratio of 0.089)."""
    walls = {'stock': [10.0, 12.0, 11.0], 'focus': [1.0, 13.0, 12.1]}
    complete = {'stock': [True, True, True], 'focus': [False, True, True]}
    out = swt.summarize(['stock', 'focus'], walls, complete)['focus']
    assert out['round_ratios'] == [None, 1.083, 1.1] and out['first_round_ratio'] is None
    assert out['median_ratio'] == out['steady_median_ratio'] == round((1.083 + 1.1) / 2, 3)  # the complete rounds
    complete['stock'][1] = False  # the baseline's failures void the round too
    assert swt.summarize(['stock', 'focus'], walls, complete)['focus']['round_ratios'] == [None, None, 1.1]
    assert swt.summarize(['stock', 'focus'], walls)['focus']['round_ratios'] == [0.1, 1.083, 1.1]  # all complete
