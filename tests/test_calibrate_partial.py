"""The calibration grid when not every run finishes, and results of an earlier run (found by a bug-hunting review:
one failing run, e.g. CUDA out of memory after hours of grid, lost every finished one; a second run replaced the
first one's files). A fake backend stands in for the decode loop: these are about the command, not the numbers."""
import json
import os

import pytest

from lmdeploy_focus.calibrate import backends, cli

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models', 'tiny-sdar-5m-b32')
COUNTS = dict(decode_steps=10, generated_tokens=10, processed_tokens=40, deep_tokens=20, candidates=10,
              kept_candidates=5, shadow_decoded=10, shadow_selected_decoded=10, shadow_random_expected=5)


class _Backend:
    name = 'reference'

    def __init__(self, failures: dict):
        self.failures, self.ran = failures, []  # cell label -> exception it raises

    def run(self, cell, prompts, max_new):
        self.ran.append(cell.label)
        if cell.label in self.failures:
            raise self.failures[cell.label]
        return dict(COUNTS), [[] for _ in prompts]


@pytest.fixture
def tasks(tmp_path):
    path = tmp_path / 'tasks.jsonl'
    path.write_text(json.dumps({'prompt': 'What is 2+2?', 'answer': '4'}) + '\n')
    return str(path)


def _calibrate(monkeypatch, tasks, out_dir, failures=None, *extra):
    """The command's outcome (the exception it ended with, None when it returned) and the backend it ran."""
    backend = _Backend(failures or {})
    monkeypatch.setattr(backends, 'load', lambda name: lambda settings: backend)
    try:
        cli.main([TINY, '--tasks', tasks, '--alphas', '1.5', '--out-dir', str(out_dir), '--quiet', '--backend',
                  'reference', *extra])
    except BaseException as e:  # noqa: BLE001  Ctrl-C escaped the old command: record it, do not end pytest
        return e, backend
    return None, backend


def test_a_failed_run_keeps_the_others_and_withholds_the_recommendation(monkeypatch, tasks, tmp_path, capsys):
    out = tmp_path / 'out'
    error, backend = _calibrate(monkeypatch, tasks, out,
                                {'leftmost α 1.5 shadow': RuntimeError('CUDA out of memory. Tried to allocate 2 GiB')})
    assert isinstance(error, SystemExit), repr(error)
    err = capsys.readouterr().err  # the failure's traceback is kept for the one who debugs it (a review)
    assert 'Traceback (most recent call last)' in err and 'in run\n' in err
    assert str(error.code) == ('calibrate: error: 1 of 5 runs did not finish (leftmost α 1.5 shadow: RuntimeError: '
                               f'CUDA out of memory. Tried to allocate 2 GiB); the finished ones are in '
                               f'{out / "calibration.json"}')
    assert len(backend.ran) == 5  # the grid went on after the failure
    record = json.loads((out / 'calibration.json').read_text())
    assert [c['status'] for c in record['cells']] == ['ok', 'ok', 'ok', 'failed', 'ok']
    assert record['cells'][3]['reason'].startswith('RuntimeError: CUDA out of memory')
    assert record['recommendation']['withheld'] is True and record['recommendation']['enable'] is False
    md = (out / 'calibration.md').read_text()
    assert '| 1.5 | 1.000 | failed | 0.500 / failed |' in md  # leftmost's shadow columns marked, not n/a
    assert 'recommendation: withheld (1 of 5 runs did not finish' in md and 'do not enable' not in md


def test_ctrl_c_writes_the_finished_runs_and_marks_the_rest_not_run(monkeypatch, tasks, tmp_path, capsys):
    out = tmp_path / 'out'
    error, backend = _calibrate(monkeypatch, tasks, out, {'importance α 1.5 evict': KeyboardInterrupt()})
    assert isinstance(error, SystemExit) and error.code == 130, repr(error)
    assert len(backend.ran) == 3  # nothing after the interrupt
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f'calibrate: interrupted during importance α 1.5 evict; the finished runs are in {out / "calibration.json"}')
    record = json.loads((out / 'calibration.json').read_text())
    assert [c['status'] for c in record['cells']] == ['ok', 'ok', 'failed', 'not run', 'not run']
    assert record['cells'][3]['reason'] == 'the grid stopped at importance α 1.5 evict'


def test_results_of_an_earlier_run_are_refused_before_any_run_unless_overwrite(monkeypatch, tasks, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'calibration.json').write_text('{"model": "another model"}')
    error, backend = _calibrate(monkeypatch, tasks, out)
    assert isinstance(error, SystemExit) and backend.ran == [], repr(error)
    assert str(error.code) == (f"calibrate: error: --out-dir '{out}' already holds calibration.json of an earlier run; "
                               'give --overwrite to replace it, or another --out-dir')
    error, backend = _calibrate(monkeypatch, tasks, out, None, '--overwrite')
    assert error is None and len(backend.ran) == 5
    assert json.loads((out / 'calibration.json').read_text())['model'] == TINY
