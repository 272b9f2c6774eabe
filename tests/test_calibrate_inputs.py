"""The calibration tool on inputs that used to end in a traceback, a wrong report or a lost grid (found by a
bug-hunting review): each case failed before its fix."""
import json
import os
from types import SimpleNamespace

import pytest

from lmdeploy_focus.calibrate import report
from lmdeploy_focus.calibrate.checks import InputError, stop_token_ids
from lmdeploy_focus.calibrate.cli import _writable_out_dir
from lmdeploy_focus.calibrate.task_file import TaskFileError, load_tasks


@pytest.mark.parametrize('char', ['\u2028', '\u2029', '\x85'])
def test_a_unicode_line_separator_inside_a_json_string_is_not_a_line_break(tmp_path, char):
    """JSON strings may hold these raw (json.dumps(..., ensure_ascii=False) writes them); str.splitlines split the
    record there and every later line number was off."""
    path = tmp_path / 'tasks.jsonl'
    path.write_text(json.dumps({'prompt': f'first{char}second', 'answer': '1'}, ensure_ascii=False) + '\n' +
                    json.dumps({'prompt': 'q2', 'answer': '2'}) + '\r\n', encoding='utf-8')
    tasks = load_tasks(str(path))
    assert [t.line for t in tasks] == [1, 2] and tasks[0].prompt == f'first{char}second' and tasks[1].prompt == 'q2'


@pytest.mark.parametrize('text', [
    '[' * 100_000,  # RecursionError in the decoder
    '{"prompt": "x", "answer": "1", "max_new_tokens": 1' + '0' * 5000 + '}',  # past int()'s 4300-digit limit
    '{"prompt": "x", "reference": "abc", "scorer": "prefix_chars:\u00b2"}',  # isdigit() but not int()
], ids=['nesting', 'huge-int', 'unicode-digit'])
def test_pathological_lines_name_their_line(tmp_path, text):
    path = tmp_path / 'tasks.jsonl'
    path.write_text(text + '\n', encoding='utf-8')
    with pytest.raises(TaskFileError, match=':1:'):
        load_tasks(str(path))


def test_a_lone_surrogate_escape_is_refused_at_load(tmp_path):
    path = tmp_path / 'tasks.jsonl'
    path.write_text('{"prompt": "x", "answer": "4", "id": "\\ud800"}\n', encoding='utf-8')  # valid JSON, no text
    with pytest.raises(TaskFileError, match=':1: holds a lone surrogate'):  # the reports failed to write at the end
        load_tasks(str(path))


def test_a_numeric_target_that_never_matches_is_refused_at_load(tmp_path):
    path = tmp_path / 'tasks.jsonl'
    path.write_text('{"prompt": "x", "answer": "1/0", "scorer": "numeric"}\n', encoding='utf-8')
    with pytest.raises(TaskFileError, match='holds no number'):  # '1/0' reads as NaN: every output scored 0
        load_tasks(str(path))


@pytest.mark.parametrize('make', ['directory', 'dangling_symlink'])
def test_an_output_file_that_cannot_be_written_is_refused_before_the_grid(tmp_path, make):
    target = tmp_path / 'calibration.md'
    if make == 'directory':
        target.mkdir()
    else:
        target.symlink_to(tmp_path / 'missing' / 'calibration.md')
    with pytest.raises(SystemExit, match='calibration.md exists and is not a writable file'):
        _writable_out_dir(str(tmp_path))
    _writable_out_dir(str(tmp_path / 'fresh'))  # a new directory is fine


def test_the_header_names_the_cpu_of_a_cpu_run_and_the_shipped_tasks(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *_: 'NVIDIA H100 80GB HBM3')
    head = report.header(SimpleNamespace(model='m', tasks=None, device='cpu', dtype='float32'), 'reference')
    assert head['machine'].startswith('CPU') and (head['device'], head['dtype']) == ('cpu', 'float32')
    assert head['tasks'].startswith('default_tasks.jsonl')
    assert report.header(SimpleNamespace(model='m', tasks='t.jsonl', device='auto'), 'engine')['machine'] == \
        'NVIDIA H100 80GB HBM3'


@pytest.mark.parametrize('eos', ['[1, null]', '"2"', '[true]'])
def test_a_malformed_eos_token_id_names_the_file(tmp_path, eos):
    (tmp_path / 'generation_config.json').write_text(f'{{"eos_token_id": {eos}}}')
    with pytest.raises(InputError, match='eos_token_id must be an integer or a list of integers'):
        stop_token_ids(str(tmp_path), SimpleNamespace(eos_token_id=2))
    (tmp_path / 'generation_config.json').write_text('{"eos_token_id": [1, 3]}')
    assert stop_token_ids(str(tmp_path), SimpleNamespace(eos_token_id=2)) == (1, 2, 3)


def _calibrate(model, tasks, out_dir, *extra):
    from lmdeploy_focus.calibrate.cli import main
    with pytest.raises(SystemExit) as info:
        main([str(model), '--tasks', str(tasks), '--alphas', '1.5', '--policies', 'leftmost', '--out-dir', str(out_dir),
              '--quiet', '--backend', 'reference', *extra])
    return str(info.value)


TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models', 'tiny-sdar-5m-b32')


@pytest.mark.parametrize('record, says', [
    ({'prompt': 'fill <|MASK|> here', 'answer': 'x'}, "holds the model's mask token"),
    ({'prompt': 'hi', 'answer': 'x', 'max_new_tokens': 10 ** 9}, "exceed the model's"),
    ({'prompt': 'word ' * 5000, 'answer': 'x', 'max_new_tokens': 8}, "exceed the model's"),
], ids=['mask token', 'huge budget', 'long prompt'])
def test_a_task_the_model_cannot_take_is_one_line_naming_it(tmp_path, record, says):
    """Found by a bug-hunting review: an AssertionError in the decode loop, a 512 GB allocation, a run that did not
    end; each is refused before the backend loads."""
    tasks = tmp_path / 'tasks.jsonl'
    tasks.write_text(json.dumps({'prompt': 'fine', 'answer': 'y'}) + '\n' + json.dumps(record) + '\n')
    message = _calibrate(TINY, tasks, tmp_path / 'out')
    assert message.startswith(f'calibrate: error: {tasks}:2: ') and says in message, message
    assert '\n' not in message.strip(), message


@pytest.mark.parametrize('model_type, weights, says', [('qwen3', True, 'calibration is for diffusion models'),
                                                       ('sdar', False, '--backend engine')])
def test_a_checkpoint_the_reference_backend_cannot_load_is_one_line(tmp_path, model_type, weights, says):
    import shutil
    model = tmp_path / 'model-b32'
    shutil.copytree(TINY, model)
    config = json.loads((model / 'config.json').read_text())
    (model / 'config.json').write_text(json.dumps(dict(config, model_type=model_type)))
    if not weights:
        for f in model.glob('*.safetensors'):
            f.unlink()
    tasks = tmp_path / 'tasks.jsonl'
    tasks.write_text(json.dumps({'prompt': 'fine', 'answer': 'y'}) + '\n')
    message = _calibrate(model, tasks, tmp_path / 'out')
    assert message.startswith('calibrate: error: the reference backend cannot load') and says in message, message
    assert '\n' not in message.strip(), message
