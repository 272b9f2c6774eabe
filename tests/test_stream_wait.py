"""``LMDEPLOY_FOCUS_AWAIT_STREAM`` (patch 18): a decode step awaits the GPU's queued work without holding the loop."""
import asyncio
import random

import pytest

from lmdeploy_focus.strategies.dllm import stream_wait


class FakeEvent:
    """Done after ``polls`` queries; records that it was recorded first."""

    def __init__(self, polls):
        self.polls, self.recorded, self.queries = polls, False, 0

    def record(self):
        self.recorded = True

    def query(self):
        assert self.recorded, 'queried before it was recorded'
        self.queries += 1
        return self.queries > self.polls


def test_drain_yields_to_the_loop_until_the_event_is_done():
    polls = random.randint(1, 20)
    made = []
    ticks = []

    def make_event():
        made.append(FakeEvent(polls))
        return made[-1]

    async def neighbour(done):
        while not done.is_set():
            ticks.append(len(made) and made[0].queries)
            await asyncio.sleep(0)

    async def main():
        done = asyncio.Event()
        task = asyncio.create_task(neighbour(done))
        await stream_wait.drain_current_stream(make_event)
        done.set()
        await task

    asyncio.run(main())
    [event] = made
    assert event.queries == polls + 1  # returned at the first query that saw the work done
    assert len(ticks) >= polls  # the neighbour ran between the polls: the loop was never held


@pytest.mark.parametrize('value, on', [('', False), ('0', False), ('1', True), (' 1 ', True)])
def test_env_switch(monkeypatch, value, on):
    monkeypatch.setenv(stream_wait.AWAIT_STREAM_ENV, value)
    assert stream_wait.await_stream_requested() is on


@pytest.mark.parametrize('value', ['2', 'yes', 'true', '-1'])
def test_env_switch_refuses_other_values(monkeypatch, value):
    monkeypatch.setenv(stream_wait.AWAIT_STREAM_ENV, value)
    with pytest.raises(ValueError, match='LMDEPLOY_FOCUS_AWAIT_STREAM must be 0 or 1'):
        stream_wait.await_stream_requested()


def test_the_agent_strategy_waits_on_decode_steps_only(monkeypatch):
    """Ours awaits the stream before a decode step when switched on; never before a prefill, never when off."""
    from types import SimpleNamespace

    from lmdeploy_focus.strategies.dllm import delayed_cache_agent
    drained = []

    async def fake_drain():
        drained.append(True)

    monkeypatch.setattr(delayed_cache_agent, 'drain_current_stream', fake_drain)
    agent = object.__new__(delayed_cache_agent.DelayedCacheAgentStrategy)
    for on in (False, True):
        agent.await_stream = on
        for decoding in (False, True):
            drained.clear()
            asyncio.run(agent.before_forward(SimpleNamespace(is_decoding=decoding)))
            assert drained == ([True] if on and decoding else [])
