"""``lmdeploy chat`` without ``--max-new-tokens``: upstream's fixed 4096 budget is cut to the session's room
instead of refused every turn (serving/answer_budget.py); an explicit budget still has to fit."""
import asyncio
import os
import random

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig
from lmdeploy_focus.serving import answer_budget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')


@pytest.fixture
def clipping():
    answer_budget.clip_answers_to_session(True)
    yield
    answer_budget.clip_answers_to_session(False)


def test_fit_answer_cuts_only_what_does_not_fit_and_leaves_the_sessions_config_alone(clipping):
    rng = random.Random()
    for _ in range(200):
        session_len, prompt_len = rng.randint(8, 300), rng.randint(1, 320)
        budget = rng.choice([None, rng.randint(1, 400)])
        config = GenerationConfig(max_new_tokens=budget)
        fitted = answer_budget.fit_answer(config, prompt_len, session_len)
        room = session_len - prompt_len
        assert config.max_new_tokens == budget  # never mutated: chat reuses it every turn
        if budget is not None and 1 <= room < budget:
            assert fitted is not config and fitted.max_new_tokens == room
        else:
            assert fitted is config  # fits, no budget (upstream fills the room), or no room (refused later)
    answer_budget.clip_answers_to_session(False)
    config = GenerationConfig(max_new_tokens=100)
    assert answer_budget.fit_answer(config, 50, 60) is config


def _engine(session_len):
    from lmdeploy_focus_dev.testing.fake_serving import async_engine_class
    return async_engine_class()(MODEL, backend='pytorch', backend_config=PytorchEngineConfig(
        max_batch_size=2, enable_metrics=False, session_len=session_len))


def _answer(engine, prompt, gen_config):
    async def main():
        engine.session_mgr.attach_event_loop(asyncio.get_running_loop())
        request = await engine.preprocess(prompt, engine.session_mgr.get(), gen_config=gen_config,
                                          do_preprocess=False)
        return [out.response async for out in engine.generate(request)]

    return asyncio.run(main())


def test_the_boundary_cuts_chats_default_budget_and_refuses_an_explicit_one():
    from lmdeploy.serve.core.exceptions import RequestError
    engine = _engine(session_len=24)
    prompt = 'abcdefghijklmnop'  # the fake backend answers with the prompt's tokens reversed, cut to the budget
    prompt_len = len(engine.tokenizer.encode(prompt, add_bos=False))
    room = 24 - prompt_len
    assert 1 <= room < prompt_len
    with pytest.raises(RequestError, match='max_tokens: 4096 does not fit'):
        _answer(engine, prompt, GenerationConfig(max_new_tokens=4096))  # pipeline() / an explicit budget
    answer_budget.clip_answers_to_session(True)
    try:
        text = ''.join(_answer(engine, prompt, GenerationConfig(max_new_tokens=4096)))
        with pytest.raises(RequestError) as info:  # a prompt that fills the session is still refused
            _answer(engine, 'x' * 24, GenerationConfig(max_new_tokens=4096))
        assert info.value.status_code == 400
    finally:
        answer_budget.clip_answers_to_session(False)
    assert len(engine.tokenizer.encode(text, add_bos=False)) == room
    assert len(engine.session_mgr.sessions) == 0


def test_pipelines_default_config_is_cut_to_the_room_and_a_changed_one_is_not():
    default = GenerationConfig()  # what pipeline() passes when given no gen_config
    room = random.randint(1, default.max_new_tokens - 1)
    fitted = answer_budget.fit_answer(default, 1000, 1000 + room)
    assert fitted.max_new_tokens == room and default.max_new_tokens == GenerationConfig().max_new_tokens
    assert answer_budget.fit_answer(default, 1000, 1000 + default.max_new_tokens) is default  # fits
    changed = GenerationConfig(temperature=0.5)  # the user chose a config: its budget is theirs, refused later
    assert answer_budget.fit_answer(changed, 1000, 1000 + room) is changed


def test_the_boundary_cuts_pipelines_default_budget():
    engine = _engine(session_len=24)
    prompt = 'abcdefghijklmnop'
    room = 24 - len(engine.tokenizer.encode(prompt, add_bos=False))
    assert 1 <= room < GenerationConfig().max_new_tokens
    text = ''.join(_answer(engine, prompt, GenerationConfig()))
    assert len(engine.tokenizer.encode(text, add_bos=False)) == room
    assert len(engine.session_mgr.sessions) == 0


def test_a_bad_budget_set_after_construction_is_named_not_a_type_error():
    """The request rules run before the budget is cut (the cut compares numbers)."""
    from lmdeploy.serve.core.exceptions import RequestError
    engine = _engine(session_len=24)
    config = GenerationConfig()
    config.max_new_tokens = 'many'
    with pytest.raises(RequestError, match='max_new_tokens'):
        _answer(engine, 'abcdefghijklmnop', config)
