"""``LMDEPLOY_FOCUS_AWAIT_STREAM`` (patch 18): a decode step awaits the last step's deep layers without holding
the loop, and only where a step recorded them."""
import asyncio
import random
from types import SimpleNamespace

import pytest

from lmdeploy_focus.strategies.dllm import stream_wait
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub


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


def test_env_switch_unset_is_on(monkeypatch):
    monkeypatch.delenv(stream_wait.AWAIT_STREAM_ENV, raising=False)
    assert stream_wait.await_stream_requested() is True
    assert DelayedCacheRuntime(block_length=32).await_stream is True


@pytest.mark.parametrize('value, on', [('', True), ('0', False), (' 0 ', False), ('1', True), (' 1 ', True)])
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


@pytest.mark.parametrize('on, sync_free', [(True, False), (False, False), (True, True)])
def test_a_decode_step_records_its_event_after_the_deep_layers_are_launched(monkeypatch, on, sync_free):
    """Through the real model forward on the CPU harness: with the switch on, the runtime records its event
    right after the step graphs launched the deep layers (never before), once per step; off, never. A small
    batch's step that reads no counts records none (nothing of it holds the loop)."""
    import torch
    from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
    from lmdeploy_focus.models.step_state import focus_state
    from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
    from lmdeploy_focus.strategies.dllm import delayed_cache_runtime
    from lmdeploy_focus_dev.testing.families import tiny_model_and_reference

    length, batch = 8, 3
    log = []

    class RecordingEvent:
        def record(self):
            log.append('record')

        def query(self):
            return True

    monkeypatch.setattr(delayed_cache_runtime, 'cuda_event', RecordingEvent)
    sdar, _ = tiny_model_and_reference('sdar', length, num_layers=3, hf_overrides={'dllm_focus': {'enable_focus': True}})
    runtime, steps = sdar.model.delayed_cache_runtime, sdar.model.step_graphs
    runtime.await_stream = on
    steps.sync_free_rows = 4096 if sync_free else 0
    run = steps.run

    def logged_run(*args, **kwargs):
        out = run(*args, **kwargs)
        log.append('deep')
        return out

    monkeypatch.setattr(steps, 'run', logged_run)
    mask_id = sdar.model_config.dllm_mask_token
    runner = sdar.new_runner(page_size=16, num_pages=64)
    prompt = torch.randint(0, mask_id, (5, )).tolist()
    runner.prefill([prompt] * batch)
    blocks = runner.current_blocks()
    mask = torch.where(blocks == mask_id, focus_state.DLLM_MASKED, focus_state.DLLM_UNMASKED)
    for _ in range(2):
        runtime.step_inputs = step_inputs_stub(
            delayed_state=DelayedCacheState.fresh(batch, length), focus_state=focus_state.FocusState.fresh(batch),
            shadow_countdown=None, next_rows_bound=None, extra_inputs=SimpleNamespace(dllm_mask=mask.flatten()),
            model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        runtime.end_step()
    records = on and not sync_free
    assert log == (['deep', 'record'] * 2 if records else ['deep'] * 2)
    assert (runtime.take_deep_launched() is not None) is records
