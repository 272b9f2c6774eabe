"""benchmark/eval_quality.py's input checks, shared with the calibration command (found by a bug-hunting review):
what ran on the wrong backend, was recorded as applied while ignored, replaced an earlier run, or was found only
after the run or as a traceback. Everything here is refused before a backend is built: ``make_backend`` is
replaced by one that fails the test."""
import importlib.util
import json
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'benchmark', 'eval_quality.py')
TINY = os.path.join(REPO, 'models', 'tiny-sdar-5m-b32')
BASE = ['--backend', 'reference', '--max-new-tokens', '4', '--thresholds', '0.9', '--quiet', '--arms', 'stock']


class _Built(Exception):
    """make_backend was reached: every check before it passed."""


@pytest.fixture
def eval_quality(monkeypatch):
    spec = importlib.util.spec_from_file_location('eval_quality_under_test', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def built(*_):
        raise _Built()

    monkeypatch.setattr(module, 'make_backend', built)
    return module


def _tasks(tmp_path, *records):
    path = tmp_path / 'tasks.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in (records or [{'prompt': 'What is 2+2?', 'answer': '4'}])))
    return str(path)


def _refusal(eval_quality, argv) -> str:
    with pytest.raises(eval_quality.BenchmarkInputError) as error:
        eval_quality.main(argv)
    return str(error.value)


def test_auto_with_device_cpu_on_a_cuda_host_runs_the_reference_loop(eval_quality, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    args = eval_quality.parse_args(['t.jsonl', TINY, '--device', 'cpu', '--dtype', 'float32'])
    eval_quality.validate(args)
    assert args.backend == 'reference'  # it was the engine, with device cpu and dtype float32 recorded


def test_auto_with_a_dtype_on_a_cuda_host_is_refused_as_calibrate_refuses_it(eval_quality, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(eval_quality.BenchmarkInputError, match='--dtype apply to the reference backend only'):
        eval_quality.validate(eval_quality.parse_args(['t.jsonl', TINY, '--dtype', 'bfloat16']))


@pytest.mark.parametrize('argv, says', [
    (['--eager-mode'], 'apply to the engine backend only'),
    (['--cache-max-entry-count', '0.5'], 'apply to the engine backend only'),
    (['--session-len', '4096'], 'apply to the engine backend only'),
    (['--cache-max-entry-count', '7'], '--cache-max-entry-count must lie in (0, 1)'),
    (['--block-length', '48'], '--block-length must be a power of two up to 256'),
], ids=['eager', 'cache-share', 'session-len', 'cache-share-range', 'block-length'])
def test_engine_flags_and_bad_values_are_refused_with_the_reference_backend(eval_quality, argv, says):
    args = eval_quality.parse_args(['t.jsonl', TINY, *BASE, *argv])
    with pytest.raises(eval_quality.BenchmarkInputError) as error:
        eval_quality.validate(args)  # they were recorded in the settings as applied
    assert says in str(error.value)


def test_results_of_an_earlier_run_are_refused_unless_overwrite(eval_quality, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'quality_reference_tiny-sdar-5m-b32_tasks.md').write_text('an earlier run with other arms')
    argv = [_tasks(tmp_path), TINY, *BASE, '--out-dir', str(out)]
    assert _refusal(eval_quality, argv) == (f"--out-dir '{out}' already holds quality_reference_tiny-sdar-5m-b32_"
                                            'tasks.md of an earlier run; give --overwrite to replace it, or another '
                                            '--out-dir')
    with pytest.raises(_Built):
        eval_quality.main(argv + ['--overwrite'])


def test_a_result_file_name_taken_by_a_directory_is_refused_before_the_run(eval_quality, tmp_path):
    out = tmp_path / 'out'
    (out / 'quality_reference_tiny-sdar-5m-b32_tasks.json').mkdir(parents=True)
    message = _refusal(eval_quality, [_tasks(tmp_path), TINY, *BASE, '--out-dir', str(out)])
    assert message.endswith('quality_reference_tiny-sdar-5m-b32_tasks.json exists and is not a writable file')


@pytest.mark.parametrize('record, says', [
    ({'prompt': 'fill <|MASK|> here', 'answer': 'x'}, "holds the model's mask token"),
    ({'prompt': 'hi', 'answer': 'x', 'max_new_tokens': 10 ** 6}, "exceed the model's 4096 positions"),
], ids=['mask-token', 'budget'])
def test_a_task_the_model_cannot_take_names_its_line_before_the_run(eval_quality, tmp_path, record, says):
    path = _tasks(tmp_path, {'prompt': 'fine', 'answer': 'y'}, record)
    message = _refusal(eval_quality, [path, TINY, *BASE, '--out-dir', str(tmp_path / 'out')])
    assert message.startswith(f'{path}:2: ') and says in message  # every cell ran and failed, or allocated it


@pytest.mark.parametrize('content, says', [('{"eos_token_id": "258"}', 'eos_token_id must be an integer'),
                                           ('{"eos_token_id": 258,', 'cannot read the stop ids')],
                         ids=['string-id', 'truncated'])
def test_a_malformed_generation_config_is_one_line(eval_quality, tmp_path, content, says):
    model = tmp_path / 'model-b32'
    shutil.copytree(TINY, model, ignore=shutil.ignore_patterns('*.safetensors'))  # read before the weights
    (model / 'generation_config.json').write_text(content)
    message = _refusal(eval_quality, [_tasks(tmp_path), str(model), *BASE, '--out-dir', str(tmp_path / 'out')])
    assert message.startswith(f'{model / "generation_config.json"}: ' if 'integer' in says else 'cannot read') and \
        says in message  # a TypeError / JSONDecodeError traceback
    assert '\n' not in message.strip(), message


def test_the_backend_only_flag_lists_are_the_parsers_groups(eval_quality, monkeypatch):
    """checks.REFERENCE_ONLY / ENGINE_ONLY repeat eval_quality's 'reference backend' / 'engine backend' groups: a flag
    added to a group and not to the list would be recorded as applied on the other backend (a review)."""
    import argparse

    from lmdeploy_focus.calibrate import checks
    parsers = []
    parse = argparse.ArgumentParser.parse_args

    def keep(self, *args, **kwargs):
        parsers.append(self)
        return parse(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', keep)
    eval_quality.parse_args(['tasks.jsonl', TINY])
    groups = {g.title: tuple(a.option_strings[-1] for a in g._group_actions if a.option_strings)
              for g in parsers[-1]._action_groups}
    assert groups['engine backend'] == checks.ENGINE_ONLY
    assert groups['reference backend'] == checks.REFERENCE_ONLY
