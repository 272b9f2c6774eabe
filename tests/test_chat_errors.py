"""``lmdeploy chat`` (upstream's chat loop, over the fake CPU backend): a turn that fails says why on stderr and
leaves the conversation as it was, so the next turn is served. Upstream printed nothing for it and appended an
empty answer, so the transcript only grew and every later turn failed the same way, silently."""
import builtins
import importlib
import logging
import os

import pytest

from lmdeploy_focus_dev.testing import fake_serving
from test_serving_validation import MODEL


def run_chat(monkeypatch, capsys, lines, guarded: bool):
    from lmdeploy.cli import chat

    from lmdeploy_focus.cli.chat_errors import report_errors
    from lmdeploy_focus.serving.answer_budget import clip_answers_to_session
    pipeline = importlib.import_module('lmdeploy.pipeline')
    monkeypatch.setattr(pipeline, 'get_task', lambda *a, **k: ('llm', fake_serving.async_engine_class()))
    if guarded:
        monkeypatch.setattr(pipeline.Pipeline, 'stream_infer', report_errors(pipeline.Pipeline.stream_infer))
    feed = iter(lines)
    monkeypatch.setattr(builtins, 'input', lambda *a: next(feed))
    clip_answers_to_session(True)  # what the patched chat sets without --max-new-tokens
    # upstream's chat builds its pipeline with log_level='ERROR' (the 'lmdeploy' logger and TM_LOG_LEVEL): undone,
    # so that later tests still see warnings
    lmdeploy_logger = logging.getLogger('lmdeploy')
    level = lmdeploy_logger.level
    monkeypatch.setenv('TM_LOG_LEVEL', os.environ.get('TM_LOG_LEVEL', 'ERROR'))
    try:
        chat.main(MODEL, 'pytorch', session_len=64, max_batch_size=4)
    finally:
        clip_answers_to_session(False)
        lmdeploy_logger.setLevel(level)
    return capsys.readouterr()


@pytest.mark.parametrize('guarded', [True, False])
def test_a_turn_that_does_not_fit_says_so_and_the_next_turn_is_served(monkeypatch, capsys, guarded):
    out = run_chat(monkeypatch, capsys, ['hi', '', 'x ' * 40, '', 'ok', '', 'exit', ''], guarded)
    errors = [line for line in out.err.splitlines() if line.startswith('Error: ')]
    answers = [part.strip() for part in out.out.split('double enter to end input >>>')[1:4]]
    assert answers[0]  # the first turn is served either way
    if guarded:
        (error, ) = errors
        assert 'must be smaller than the model context length (64)' in error and '"end"' in error
        assert answers[1] == '' and answers[2]  # the third turn is served: the failed one left the transcript
    else:  # upstream: nothing said, and the third turn fails too (the transcript kept the failed one)
        assert errors == [] and answers[1:] == ['', '']
