"""benchmark/eval_quality.py around a run (found by a bug-hunting review): what was only found after the last cell,
or was reported as success. Reference backend on a random tiny SDAR (CPU); each case failed before its fix."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, 'benchmark')
SCRIPT = os.path.join(BENCH, 'eval_quality.py')
BASE = ['--backend', 'reference', '--max-new-tokens', '4', '--thresholds', '0.9', '--quiet', '--arms', 'stock']


@pytest.fixture(scope='module')
def tiny_sdar(tmp_path_factory):
    from lmdeploy_focus_dev.tools.random_checkpoint import write_random_checkpoint
    return str(write_random_checkpoint('tiny-sdar', tmp_path_factory.mktemp('ckpt') / 'tiny-sdar-b4', seed=0,
                                       dtype='float32', device='cpu'))


@pytest.fixture
def eval_quality():
    spec = importlib.util.spec_from_file_location('eval_quality_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmark/ on sys.path for its packages
    return module


def _tasks(path, records):
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records), encoding='utf-8')
    return str(path)


def _patch_cells(monkeypatch, run_cell):
    from quality.reference_backend import ReferenceBackend
    upstream = ReferenceBackend.run_cell
    monkeypatch.setattr(ReferenceBackend, 'run_cell', lambda self, *a: run_cell(upstream, self, *a))


def test_an_unusable_out_dir_is_refused_before_any_cell(eval_quality, tiny_sdar, tmp_path, monkeypatch):
    ran = []
    _patch_cells(monkeypatch, lambda upstream, self, *a: ran.append(a) or upstream(self, *a))
    blocker = tmp_path / 'out'
    blocker.write_text('a file, not a directory')
    with pytest.raises(eval_quality.BenchmarkInputError, match='cannot be created'):
        eval_quality.main([_tasks(tmp_path / 't.jsonl', [{'prompt': 'What is 2+2?', 'answer': '4'}]), tiny_sdar,
                           *BASE, '--out-dir', str(blocker)])
    assert ran == []  # it was a FileExistsError after the whole run


def test_the_task_file_digest_is_of_the_tasks_that_ran(eval_quality, tiny_sdar, tmp_path, monkeypatch):
    path = _tasks(tmp_path / 't.jsonl', [{'prompt': 'What is 2+2?', 'answer': '4'}])
    expected = eval_quality.report.file_sha256(path)

    def run_cell(upstream, self, *a):
        with open(path, 'a') as f:  # the file changes while the (long) run goes on
            f.write(json.dumps({'prompt': 'later', 'answer': '1'}) + '\n')
        return upstream(self, *a)

    _patch_cells(monkeypatch, run_cell)
    run = eval_quality.main([path, tiny_sdar, *BASE, '--out-dir', str(tmp_path / 'out')])
    assert run['task_file_sha256'] == expected


def test_a_failed_cell_fails_the_run_after_the_report(eval_quality, tiny_sdar, tmp_path, monkeypatch):
    from quality.outcome import FAILED, CellOutcome
    _patch_cells(monkeypatch, lambda upstream, self, arm, threshold, prompts:
                 CellOutcome(arm, threshold, FAILED, reason='RuntimeError: CUDA out of memory'))
    out = tmp_path / 'out'
    with pytest.raises(SystemExit, match=r'1 cell\(s\) failed: stock @ 0.9'):
        eval_quality.main([_tasks(tmp_path / 't.jsonl', [{'prompt': 'What is 2+2?', 'answer': '4'}]), tiny_sdar,
                           *BASE, '--out-dir', str(out)])
    assert list(out.glob('*.json'))  # the report is written first


def test_the_result_files_are_utf8_whatever_the_locale(tiny_sdar, tmp_path):
    path = _tasks(tmp_path / 't.jsonl', [{'prompt': 'What is 2+2?', 'answer': '4', 'id': 'aufgabe-ü'}])
    env = dict(os.environ, LC_ALL='C', LANG='C', PYTHONCOERCECLOCALE='0')
    proc = subprocess.run([sys.executable, '-X', 'utf8=0', SCRIPT, path, tiny_sdar, *BASE, '--out-dir',
                           str(tmp_path / 'out')], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-600:]  # it was UnicodeEncodeError ('ascii' codec) at write time
    (written, ) = (tmp_path / 'out').glob('*.json')
    assert 'aufgabe-ü' in written.read_text(encoding='utf-8')


def test_device_and_dtype_are_refused_with_the_engine_backend(eval_quality):
    args = eval_quality.parse_args(['t.jsonl', '/m', '--backend', 'engine', '--dtype', 'float16'])
    with pytest.raises(eval_quality.BenchmarkInputError, match='reference backend only'):
        eval_quality.validate(args)  # it recorded dtype float16 for a run in the checkpoint's dtype
