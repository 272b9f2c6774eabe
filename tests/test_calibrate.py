"""``python -m lmdeploy_focus.calibrate``: the recommendation logic, the backend registry, and the command end
to end on the committed tiny model with the reference backend (CPU) and the engine backend (GPU; skipped without
CUDA)."""
import json
import os
import subprocess
import sys

import pytest

from lmdeploy_focus.calibrate import backends
from lmdeploy_focus.calibrate.grid import BASELINE, EVICT, SHADOW, Cell, CellResult, plan, recommend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')
TASKS = os.path.join(ROOT, 'benchmark', 'data', 'tiny_tasks_heldout.jsonl')


def _result(mode, policy=None, alpha=None, *, recall=None, cost=None):
    counts = dict(decode_steps=10, generated_tokens=10, deep_tokens=10 * cost if cost else 0, shadow_decoded=0,
                  shadow_selected_decoded=0, shadow_random_expected=0)
    if recall is not None:
        counts.update(shadow_decoded=100, shadow_selected_decoded=100 * recall, shadow_random_expected=30)
    return CellResult(Cell(mode, policy, alpha), counts)


def test_recommends_the_cheapest_setting_that_meets_the_target():
    results = [_result(BASELINE, cost=10),
               _result(SHADOW, 'importance', 1.5, recall=0.96), _result(EVICT, 'importance', 1.5, cost=6),
               _result(SHADOW, 'importance', 3.0, recall=0.99), _result(EVICT, 'importance', 3.0, cost=8),
               _result(SHADOW, 'leftmost', 1.5, recall=0.90), _result(EVICT, 'leftmost', 1.5, cost=4)]
    rec = recommend(results, 0.95)
    assert (rec.policy, rec.alpha) == ('importance', 1.5)  # leftmost is cheaper but misses the target
    assert recommend(results, 0.97).alpha == 3.0
    none = recommend(results, 0.995)
    assert not none.enable and 'no setting reaches recall 0.995' in none.reason


def test_table_sets_each_policys_recall_beside_its_own_random_baseline():
    """Each policy keeps its own number of tokens in shadow mode, so each has its own random baseline (the table
    printed importance's beside both, and n/a for leftmost run alone)."""
    from lmdeploy_focus.calibrate.report import COLUMNS, table_rows

    def shadow(policy, recall, random_expected):
        counts = dict(decode_steps=10, generated_tokens=10, deep_tokens=0, shadow_decoded=100,
                      shadow_selected_decoded=100 * recall, shadow_random_expected=random_expected)
        return CellResult(Cell(SHADOW, policy, 1.0), counts)

    row = table_rows([shadow('importance', 0.4, 37), shadow('leftmost', 0.09, 8)], [1.0])[0]
    assert row[COLUMNS.index('recall random (same size) imp / left')] == '0.370 / 0.080'
    alone = table_rows([shadow('leftmost', 0.2, 19)], [1.0])[0]
    assert alone[COLUMNS.index('recall random (same size) imp / left')] == 'n/a / 0.190'


def test_no_recommendation_when_evicting_saves_nothing():
    results = [_result(BASELINE, cost=5), _result(SHADOW, 'importance', 2.0, recall=0.99),
               _result(EVICT, 'importance', 2.0, cost=5.5)]
    assert not recommend(results, 0.95).enable


def test_plan_has_a_baseline_and_both_modes_per_policy_and_alpha():
    cells = plan([1.5, 2.0])
    assert cells[0] == Cell(BASELINE) and len(cells) == 1 + 2 * 2 * 2
    assert Cell(SHADOW, 'leftmost', 2.0) in cells and Cell(EVICT, 'importance', 1.5) in cells
    assert Cell(SHADOW, 'importance', 1.5).focus_options()['focus_shadow'] is True


def test_backend_registry_finds_the_dev_backend_and_names_the_install_when_missing(monkeypatch):
    assert 'reference' in backends.available() and 'engine' in backends.available()
    monkeypatch.setattr(backends, 'entry_points', lambda group: [])
    with pytest.raises(backends.BackendUnavailable, match=r"pip install '\.\[dev\]'"):
        backends.load('reference')


def test_default_task_set_is_shipped_and_valid():
    from importlib import resources

    from lmdeploy_focus.calibrate.task_file import load_tasks
    with resources.as_file(resources.files('lmdeploy_focus.calibrate') / 'default_tasks.jsonl') as path:
        assert len(load_tasks(str(path))) >= 5


@pytest.mark.parametrize('alpha', ['nan', 'inf', '1e6', '0.5'])
def test_a_bad_alpha_is_refused_before_anything_runs(alpha, capsys):
    from lmdeploy_focus.calibrate.cli import parse_args
    with pytest.raises(SystemExit):
        parse_args([TINY, '--alphas', '1.5', alpha])
    assert '--alphas must each be a number in [1, 10000]' in capsys.readouterr().err


def test_max_new_tokens_caps_every_task_and_defaults_to_each_tasks_own():
    from types import SimpleNamespace

    from lmdeploy_focus.calibrate.cli import DEFAULT_MAX_NEW_TOKENS, token_budgets
    tasks = [SimpleNamespace(max_new_tokens=64), SimpleNamespace(max_new_tokens=None), SimpleNamespace(max_new_tokens=4)]
    assert token_budgets(tasks, None) == [64, DEFAULT_MAX_NEW_TOKENS, 4]
    assert token_budgets(tasks, 8) == [8, 8, 4]  # every shipped task sets its own: the flag used to change nothing


def test_recommendation_names_the_block_length_and_threshold_it_was_measured_at():
    from lmdeploy_focus.calibrate.grid import Recommendation
    from lmdeploy_focus.calibrate.report import recommendation_line
    line = recommendation_line(Recommendation('importance', 1.5, 'recall 0.96'), 32, 0.9)
    assert line == ('recommendation: --focus --dllm-focus-policy importance --dllm-focus-alpha 1.5 --dllm-block-length 32 '
                    '--dllm-confidence-threshold 0.9 (recall 0.96)')
    assert 'threshold' not in recommendation_line(Recommendation(None, None, 'no setting'), 32, 0.9)


def test_a_model_path_that_is_no_folder_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, '-m', 'lmdeploy_focus.calibrate', str(tmp_path / 'missing-b32'), '--out-dir',
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith('calibrate: error: ') and 'is not a model folder' in lines[0], \
        out.stderr[-2000:]


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, '-m', 'lmdeploy_focus.calibrate', '--help'], capture_output=True, text=True,
                         check=True).stdout
    for flag in ('--tasks', '--num-tasks', '--alphas', '--policies', '--target-recall', '--threshold', '--block-length',
                 '--max-new-tokens', '--batch-size', '--backend', '--device', '--dtype', '--eager-mode', '--out-dir',
                 '--quiet'):
        assert flag in out, flag


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.parametrize('backend', [
    'reference',
    pytest.param('engine', marks=[pytest.mark.gpu,
                                  pytest.mark.skipif(not _has_cuda(), reason='the engine backend needs a CUDA GPU')]),
])
def test_end_to_end_on_the_tiny_model(tmp_path, backend):
    out = subprocess.run([sys.executable, '-m', 'lmdeploy_focus.calibrate', TINY, '--tasks', TASKS, '--num-tasks', '2',
                          '--alphas', '1.5', '--max-new-tokens', '32', '--backend', backend, '--out-dir',
                          str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'recommendation:' in out.stdout and 'calibrate' in out.stderr  # the progress bar
    record = json.loads((tmp_path / 'calibration.json').read_text())
    assert len(record['cells']) == 5 and record['backend'] == backend
    assert record['machine'].startswith('CPU') != _has_cuda()
    shadow = [c for c in record['cells'] if c['mode'] == 'shadow']
    assert all(c['counts']['shadow_decoded'] > 0 for c in shadow)  # the selection mattered in some step
    assert all(0.0 <= c['recall'] <= 1.0 and 0.0 <= c['random_recall'] <= 1.0 for c in shadow)
    evict = [c for c in record['cells'] if c['mode'] == 'evict']
    assert all(c['kept_fraction'] < 1.0 for c in evict)  # it evicted
    baseline = record['cells'][0]
    assert baseline['mode'] == 'baseline' and baseline['counts']['deep_tokens'] == baseline['counts']['processed_tokens']
    assert (tmp_path / 'calibration.md').read_text().count('|') > 20


@pytest.mark.parametrize('length', ['33', '512', '3'])
def test_a_block_length_the_engine_cannot_serve_is_refused(length, capsys):
    from lmdeploy_focus.calibrate.cli import parse_args
    with pytest.raises(SystemExit):
        parse_args([TINY, '--block-length', length])
    assert '--block-length must be a power of two up to 256' in capsys.readouterr().err
    assert parse_args([TINY, '--block-length', '64', '--policies', 'leftmost', 'leftmost']).policies == ['leftmost']


def test_options_of_the_other_backend_are_refused_not_dropped():
    from lmdeploy_focus.calibrate.cli import _backend_name, parse_args
    with pytest.raises(SystemExit, match='--device and --dtype apply to the reference backend only'):
        _backend_name(parse_args([TINY, '--backend', 'engine', '--dtype', 'float64']))
    with pytest.raises(SystemExit, match='--eager-mode applies to the engine backend only'):
        _backend_name(parse_args([TINY, '--backend', 'reference', '--eager-mode']))
    assert _backend_name(parse_args([TINY, '--device', 'cpu'])) == 'reference'  # auto with a CPU request


@pytest.mark.parametrize('case', ['out_dir_is_a_file', 'folder_without_config'])
def test_bad_paths_fail_in_one_line_before_any_run(tmp_path, case):
    model, out_dir = TINY, tmp_path / 'out'
    if case == 'out_dir_is_a_file':
        out_dir.write_text('')
        expected = 'cannot be created'
    else:
        model = tmp_path / 'empty-b32'
        model.mkdir()
        expected = 'is not a model folder'
    out = subprocess.run([sys.executable, '-m', 'lmdeploy_focus.calibrate', str(model), '--backend', 'reference',
                          '--out-dir', str(out_dir), '--quiet'], capture_output=True, text=True, timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith('calibrate: error: ') and expected in lines[0], out.stderr[-2000:]
    assert 'calibrate' not in out.stdout  # nothing ran: no table printed
