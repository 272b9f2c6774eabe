"""``LMDEPLOY_FOCUS_AWAIT_STREAM`` (patch 18): a decode step awaits the last step's deep layers without holding
the loop, and only where a step recorded them."""
import asyncio
import random
from types import SimpleNamespace

import pytest

from lmdeploy_focus.strategies.dllm import stream_wait
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime


class FakeEvent:
    """Completes after ``polls`` queries."""

    def __init__(self, polls):
        self.polls, self.queries = polls, 0

    def query(self):
        self.queries += 1
        return self.queries > self.polls


def test_wait_yields_to_the_loop_until_the_event_is_done():
    polls = random.randint(1, 20)
    event, seen = FakeEvent(polls), []

    async def neighbour(done):  # another task on the loop: it must run between the polls
        while not done.is_set():
            seen.append(event.queries)
            await asyncio.sleep(0)

    async def main():
        done = asyncio.Event()
        task = asyncio.create_task(neighbour(done))
        await stream_wait.wait_for_event(event, poll_s=0)
        done.set()
        await task

    asyncio.run(main())
    assert event.queries == polls + 1  # returned at the first query that saw the event complete
    assert set(range(1, polls + 1)) <= set(seen)  # the neighbour ran after every unfinished poll


@pytest.mark.parametrize('value, on', [('', False), ('0', False), ('1', True), (' 1 ', True)])
def test_env_switch(monkeypatch, value, on):
    monkeypatch.setenv(stream_wait.AWAIT_STREAM_ENV, value)
    assert stream_wait.await_stream_requested() is on
    assert DelayedCacheRuntime(block_length=32).await_stream is on  # read when the engine builds its runtime


@pytest.mark.parametrize('value', ['2', 'yes', 'true', '-1'])
def test_env_switch_refuses_other_values(monkeypatch, value):
    monkeypatch.setenv(stream_wait.AWAIT_STREAM_ENV, value)
    with pytest.raises(ValueError, match='LMDEPLOY_FOCUS_AWAIT_STREAM must be 0 or 1'):
        DelayedCacheRuntime(block_length=32)


def test_the_agent_awaits_a_recorded_step_once_and_only_before_a_real_decode_forward():
    """The event of the last step's deep layers is awaited before the next decode forward, once; a prefill or a
    DP dummy forward does not wait (and does not use it up); with nothing recorded nothing is awaited."""
    runtime = DelayedCacheRuntime(block_length=32)
    agent = object.__new__(DelayedCacheAgentStrategy)
    agent.runtime = runtime

    def forward(decoding=True, dummy=False):
        asyncio.run(agent.before_forward(SimpleNamespace(is_decoding=decoding, is_dummy=dummy)))

    forward()  # nothing recorded yet
    event = FakeEvent(random.randint(1, 5))
    runtime._deep_event, runtime._deep_pending = event, True  # what deep_launched() leaves on a GPU
    forward(decoding=False)  # a prefill: no wait
    forward(dummy=True)  # nor a DP dummy
    assert event.queries == 0
    forward()
    assert event.queries == event.polls + 1
    forward()  # taken once: the next forward does not wait on it again
    assert event.queries == event.polls + 1 and runtime.take_deep_launched() is None
