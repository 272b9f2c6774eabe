"""``--dllm-focus-alpha auto``'s controller update as one replay (``strategies/dllm/controller_graph.py``).

The replayed function is ``alpha_controller.update`` on the step's three sums; these tests hold the in-place,
replayed controller to the functional update, bit for bit, on random count sequences (fresh each run): eagerly on
CPU, and captured in a real CUDA graph on the GPU.
"""
import random
from dataclasses import fields, replace
from types import SimpleNamespace

import pytest
import torch

from lmdeploy_focus.models.step_graphs import _Replayable
from lmdeploy_focus.strategies.dllm import alpha_controller
from lmdeploy_focus.strategies.dllm.alpha_controller import AlphaControllerConfig
from lmdeploy_focus.strategies.dllm.controller_graph import GraphedController


def _config(rng):
    return AlphaControllerConfig(target_recall=rng.uniform(0.3, 0.95), alpha_max=rng.uniform(2.0, 6.0),
                                 gain=rng.uniform(0.5, 3.0), decay=rng.uniform(0.0, 0.95),
                                 min_updates=rng.randint(1, 4), probation=rng.random() < 0.5)


def _step_counts(rng, device):
    """One step's per-sequence shadow counts: decoded, selected-and-decoded <= decoded, the random baseline."""
    batch = rng.randint(1, 9)
    decoded = torch.tensor([rng.choice([0, 0, 1, 2, 4]) for _ in range(batch)], device=device)
    selected = torch.tensor([rng.randint(0, int(d)) for d in decoded], device=device)
    rand = decoded.to(torch.float32) * torch.rand(batch, device=device)
    return decoded, selected, rand


def _same(a, b):
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu()), f'{f.name}: {x} != {y}'


def _check_against_update(device, use_graph):
    rng = random.Random()
    config = _config(rng)
    pool = torch.cuda.graph_pool_handle() if use_graph else None
    controller = GraphedController(config, device, lambda fn: _Replayable(fn, pool, use_graph))
    reference = alpha_controller.initial_state(config, device)
    _same(controller.state, reference)  # the warm-up (and capture) run left the initial state alone
    state = controller.state
    for step in range(rng.randint(40, 120)):
        if rng.random() < 0.05:  # a state set from outside (as a test or a re-capture would): adopted
            reference = replace(reference, alpha=reference.alpha * 1.25, fallback=~reference.fallback)
            state = reference
        counts = _step_counts(rng, device)
        reference = alpha_controller.update(reference, config, *counts)
        state = controller.update(state, *counts)
        assert state is controller.state
        _same(state, reference)
    assert int(controller.state.updates) > 0, 'no informative step: nothing compared'


def test_replayed_update_equals_the_functional_update():
    _check_against_update('cpu', use_graph=False)


def test_a_recapture_carries_the_state_over():
    rng = random.Random()
    config = _config(rng)
    state = alpha_controller.initial_state(config)
    for _ in range(30):
        state = alpha_controller.update(state, config, *_step_counts(rng, 'cpu'))
    controller = GraphedController(config, 'cpu', lambda fn: _Replayable(fn, None, False), state=state)
    _same(controller.state, state)
    assert controller.state is not state  # fixed tensors of its own


def test_state_tensors_are_normal_tensors_under_inference_mode():
    """Warm-up may run under inference mode; the step's bookkeeping updates the state wherever it runs."""
    config = AlphaControllerConfig()
    with torch.inference_mode():
        controller = GraphedController(config, 'cpu', lambda fn: _Replayable(fn, None, False))
    decoded = torch.tensor([2, 1])
    state = controller.update(controller.state, decoded, torch.tensor([1, 1]), torch.tensor([0.5, 0.5]))
    assert not state.alpha.is_inference() and int(state.updates) == 1


def _runtime(config):
    from lmdeploy_focus.models.step_state.focus_step import FocusConfig
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
    return DelayedCacheRuntime(block_length=8, focus=FocusConfig(alpha=config.alpha_init, policy='importance',
                                                                 shadow=False, auto=config))


def _auto_step(batch=4, length=8):
    """What ``_auto_update`` reads of a step: its FOCUS outcome, the shadow sequences, the decoded slots."""
    def flags(p, *shape):
        return torch.rand(*shape) < p
    candidate = flags(0.7, batch, length)
    outcome = SimpleNamespace(candidate_dense=candidate, selected_dense=candidate & flags(0.5, batch, length),
                              num_candidates=candidate.sum(1), evicting=flags(0.8, batch))
    return outcome, flags(0.5, batch), candidate & flags(0.4, batch, length)


def test_the_runtime_keeps_one_controller_across_a_graph_reset_and_a_recapture():
    """Capture, steps through the replay, upstream's graph reset (eager steps on the same state), a new warm-up
    capture carrying the state over: every step's controller and statistics columns equal an eager-only run's."""
    rng = random.Random()
    config = _config(rng)
    eager, graphed = _runtime(config), _runtime(config)
    eager.alpha_state = alpha_controller.initial_state(config)
    replayable = lambda fn: _Replayable(fn, None, False)  # noqa: E731
    graphed.capture_controller(replayable, torch.device('cpu'))
    first = graphed.controller
    assert first is not None and graphed.alpha_state is first.state
    for step in range(90):
        if step == 30:
            graphed.drop_controller_graph()  # what the model's reset_step_graphs does after the step graphs'
            assert graphed.controller is None
        if step == 60:
            graphed.capture_controller(replayable, torch.device('cpu'))
            assert graphed.controller is not first and graphed.alpha_state is graphed.controller.state
        outcome, shadow, decoded = _auto_step()
        columns, fallback_before = [], eager.alpha_state.fallback.clone()
        for runtime in (eager, graphed):
            runtime.step, runtime.shadow_seq = SimpleNamespace(focus=outcome), shadow
            columns.append(runtime._auto_update(decoded))
        _same(graphed.alpha_state, eager.alpha_state)
        assert columns[0].keys() == columns[1].keys()
        assert all(torch.equal(columns[0][k], columns[1][k]) for k in columns[0])
        # the step's fall-back column is the controller as the step ran, before this update
        assert torch.equal(columns[1]['auto_fallback_steps'], fallback_before & ~shadow)
    assert int(eager.alpha_state.updates) > 0, 'no informative step: nothing compared'


def test_the_models_graph_reset_drops_the_controller_graph():
    from lmdeploy_focus_dev.testing.families import tiny_model_and_reference
    sdar, _ = tiny_model_and_reference('sdar', 8, num_layers=3,
                                       hf_overrides={'dllm_focus': {'enable_focus': True, 'focus_alpha': 'auto'}})
    runner = sdar.new_runner(page_size=16, num_pages=16)
    runner.capture_step_graphs([2])
    runtime = sdar.model.delayed_cache_runtime
    assert runtime.controller is not None
    sdar.model.reset_step_graphs()
    assert runtime.controller is None and not sdar.model.step_graphs.buckets


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_captured_update_equals_the_functional_update_on_the_gpu():
    # captured on a side stream, as the engine captures on its agent's stream (the default stream cannot be)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            _check_against_update('cuda', use_graph=True)
    torch.cuda.current_stream().wait_stream(stream)
