"""``--dllm-focus-alpha auto`` through the engine path on CPU (the CPU harness: our SDAR class on upstream modules,
the runtime, the sparse step with per-sequence α and shadow flags, the agent's own sampling and unmasking).

The controller's target stands in for the scripted recall: a target no selection can meet (1.0) must push α
up, a target every selection meets (0.05) must pull it down; fall-back is kept out of the way
(``min_updates`` huge) so the direction alone is tested.
"""
import secrets
from dataclasses import replace
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.engine.logits_process import SamplingInputs
from lmdeploy_focus.config.options import MAX_AUTO_SHADOW_EVERY, FocusOptions
from lmdeploy_focus.models import step_graphs
from lmdeploy_focus.models.step_state import focus_state, shadow_schedule
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState, reset_rows, starts_new_block
from lmdeploy_focus.strategies.dllm.alpha_controller import AlphaControllerConfig
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

L = 8
MASKED, UNMASKED = focus_state.DLLM_MASKED, focus_state.DLLM_UNMASKED


def _generate(target_recall, steps=40, padded=False, force_fallback=False):
    sdar, _ = tiny_model_and_reference(
        'sdar', L, num_layers=3,
        hf_overrides={'dllm_focus': {'enable_focus': True, 'focus_alpha': 'auto', 'focus_auto_shadow_every': 2,
                                     'track': True}})
    runtime = sdar.model.delayed_cache_runtime
    assert runtime.focus.auto is not None and runtime.focus.shadow_every == 2
    runtime.focus = replace(runtime.focus, auto=AlphaControllerConfig(target_recall=target_recall,
                                                                      min_updates=10_000, gain=2.0,
                                                                      probation=False))
    mask_id = sdar.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC,
                           denoising_steps=L, confidence_threshold=0.3)
    agent = DelayedCacheAgentStrategy(unmasking, mask_id, runtime)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, mask_id, (n, ), generator=gen).tolist() for n in (3, 11, 6, 9)]
    B = len(prompts)
    runner = sdar.new_runner(page_size=16, num_pages=128)
    if padded:
        with mock.patch.object(step_graphs, 'ROW_ALIGN', 4):  # row buckets of 4: fronts below B̂·L get used
            runner.capture_step_graphs([8])
    runner.prefill(prompts)
    blocks = runner.current_blocks()
    mask = torch.where(blocks == mask_id, MASKED, UNMASKED)
    delayed, focus = DelayedCacheState.fresh(B, L), focus_state.FocusState.fresh(B)
    countdown = shadow_schedule.fresh(B, 2, seed=0, first_index=0)
    shadow_steps, bound = 0, None
    for _ in range(steps):
        step_inputs = step_inputs_stub(delayed_state=delayed, focus_state=focus, shadow_countdown=countdown,
                                      next_rows_bound=bound,
                                      extra_inputs=SimpleNamespace(dllm_mask=mask.flatten()),
                                      model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        runtime.step_inputs = step_inputs
        if force_fallback:
            from lmdeploy_focus.strategies.dllm.alpha_controller import initial_state
            state = runtime.alpha_state or initial_state(runtime.focus.auto)
            runtime.alpha_state = replace(state, fallback=torch.ones_like(state.fallback))
        ragged = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        processed_rows = int(runtime.step.processed_per_seq.sum())
        assert bound is None or processed_rows <= bound, f'{processed_rows} rows, bound {bound}'  # no front rerun
        shadow_steps += int(runtime.shadow_seq.sum())
        logits, _ = agent.sampling_rows(ragged, SamplingInputs(batch_size=B * L, max_num_logprobs=-1))
        extra = SimpleNamespace(dllm_mask=mask.flatten().clone())
        next_ids, extra = agent.post_sampling(SimpleNamespace(input_ids=blocks.flatten()), logits, logits.argmax(-1),
                                              extra)
        next_mask = extra.dllm_mask.view(B, L)
        blocks = torch.where(next_mask == MASKED, mask_id, next_ids.view(B, L))
        committed = starts_new_block(next_mask.flatten(), L)
        delayed = reset_rows(step_inputs.delayed_state, committed)
        focus = focus_state.reset_rows(step_inputs.focus_state, committed)
        countdown = step_inputs.shadow_countdown
        bound = step_inputs.next_rows_bound
        mask = torch.where(committed[:, None], MASKED, next_mask)
        blocks = torch.where(committed[:, None], mask_id, blocks)
        if committed.any():
            runner.commit_blocks([b for b in range(B) if committed[b]])
    return runtime, shadow_steps


@pytest.mark.parametrize('padded', [False, True])
def test_auto_moves_alpha_in_the_direction_the_recall_demands(padded):
    up, shadow_up = _generate(1.0, padded=padded)
    down, _ = _generate(0.05, padded=padded)
    report_up, report_down = up.auto_alpha_report(), down.auto_alpha_report()
    assert report_up['updates'] > 0 and report_down['updates'] > 0, 'no informative shadow step: nothing tested'
    assert report_up['alpha'] > 1.5 and report_down['alpha'] < 1.5
    assert report_down['alpha'] >= 1.0 and report_up['alpha'] <= 4.0
    stats = up.stats.read()
    assert stats['auto_shadow_steps'] == shadow_up > 0
    assert 0 < stats['shadow_decoded'] and stats['shadow_selected_decoded'] <= stats['shadow_decoded']
    assert stats['deep_tokens'] < stats['processed_tokens'], 'the non-shadow steps never evicted'
    assert stats['auto_fallback_steps'] == 0


@pytest.mark.parametrize('force_fallback', [False, True])
def test_the_replayed_controller_decides_as_the_eager_one(force_fallback):
    """Padded steps (the graph path) update the controller through its replay (controller_graph) once the warm-up
    captured it; the same run with the capture skipped updates it eagerly: same controller, same statistics."""
    seed = secrets.randbits(31)  # one weight seed for both runs (a fresh one each test run)
    with mock.patch('secrets.randbits', return_value=seed):
        replayed, _ = _generate(1.0, padded=True, force_fallback=force_fallback)
        with mock.patch('lmdeploy_focus.strategies.dllm.delayed_cache_runtime.DelayedCacheRuntime.capture_controller'):
            eager, _ = _generate(1.0, padded=True, force_fallback=force_fallback)
    assert replayed.controller is not None and replayed.alpha_state is replayed.controller.state
    assert eager.controller is None
    assert replayed.auto_alpha_report() == eager.auto_alpha_report(), f'weight seed {seed}'
    assert replayed.auto_alpha_report()['updates'] > 0
    assert replayed.stats.read() == eager.stats.read()


def test_fallback_stops_eviction_outside_shadow_steps():
    """A controller that has fallen back gives the non-shadow sequences α = L: nothing is evicted anywhere,
    the shadow steps still measure, and the fall-back steps are counted (req_metrics.dllm, /metrics)."""
    runtime, _ = _generate(1.0, force_fallback=True)
    stats = runtime.stats.read()
    assert stats['deep_tokens'] == stats['processed_tokens']
    assert stats['auto_fallback_steps'] > 0 and stats['shadow_decoded'] > 0
    assert runtime.auto_alpha_report()['fallback'] is True


def test_auto_option_validation_and_resolution():
    assert FocusOptions(focus_alpha='auto').auto_alpha
    with pytest.raises(ValueError, match='auto'):
        FocusOptions(focus_alpha='automatic')
    with pytest.raises(ValueError, match='dllm_focus_alpha must be <= 10000'):
        FocusOptions(focus_alpha=1e39)  # would overflow float32 in the target count
    assert FocusOptions(focus_alpha=10_000).focus_alpha == 10_000.0
    for bad in (0, MAX_AUTO_SHADOW_EVERY + 1, 2**64):  # 2**64 overflowed the int64 schedule inside the step
        with pytest.raises(ValueError, match='dllm_focus_auto_shadow_every must be an integer >= 1 and at most'):
            FocusOptions(focus_auto_shadow_every=bad)
    assert FocusOptions(focus_auto_shadow_every=MAX_AUTO_SHADOW_EVERY).focus_auto_shadow_every == MAX_AUTO_SHADOW_EVERY
    for field, bad in [('focus_auto_target_recall', 0.0), ('focus_auto_target_recall', 1.2),
                       ('focus_auto_alpha_max', 0.5), ('focus_auto_alpha_max', 1.0), ('focus_auto_alpha_max', float('inf')),
                       ('focus_auto_alpha_max', 1e39),
                       ('focus_auto_margin', -0.1), ('focus_auto_margin', 0.5), ('focus_auto_margin', True),
                       ('focus_auto_target_recall', '0.9')]:
        with pytest.raises(ValueError, match=f'dllm_{field}'):
            FocusOptions(**{field: bad})


def test_auto_options_set_the_controller():
    """The --dllm-focus-auto-* flags reach the engine's controller; α starts at the fixed default unless
    α_max is below it, and the recovery margin stays above the fall-back margin."""
    options = FocusOptions(enable_focus=True, focus_alpha='auto', focus_auto_target_recall=0.8,
                           focus_auto_alpha_max=1.2, focus_auto_margin=0)
    config = AlphaControllerConfig.from_options(options)
    assert (config.target_recall, config.alpha_max, config.alpha_init, config.margin) == (0.8, 1.2, 1.2, 0.0)
    assert config.recover_margin > config.margin
    assert AlphaControllerConfig.from_options(FocusOptions()) == AlphaControllerConfig()
    sdar, _ = tiny_model_and_reference(
        'sdar', 8, num_layers=3,
        hf_overrides={'dllm_focus': {'enable_focus': True, 'focus_alpha': 'auto', 'focus_auto_target_recall': 0.8,
                                     'focus_auto_alpha_max': 3}})
    auto = sdar.model.delayed_cache_runtime.focus.auto
    assert (auto.target_recall, auto.alpha_max, auto.alpha_init) == (0.8, 3.0, 1.5)


def test_cost_only_env_keeps_auto_evicting(monkeypatch):
    """Benchmarks on random weights (LMDEPLOY_FOCUS_AUTO_COST_ONLY=1): no probation, no switch, α pinned at the
    fixed default, so that auto vs fixed α compares the same kept sets and measures auto's cost only."""
    from lmdeploy_focus.strategies.dllm.alpha_controller import initial_state, update
    from lmdeploy_focus.strategies.dllm.focus_config import AUTO_COST_ONLY_ENV
    monkeypatch.setenv(AUTO_COST_ONLY_ENV, '1')
    sdar, _ = tiny_model_and_reference('sdar', 8, num_layers=3,
                                       hf_overrides={'dllm_focus': {'enable_focus': True, 'focus_alpha': 'auto'}})
    auto = sdar.model.delayed_cache_runtime.focus.auto
    state = initial_state(auto)
    for _ in range(100):  # chance-level selection: the guarded controller would never evict
        state = update(state, auto, torch.tensor(10.0), torch.tensor(4.0), torch.tensor(4.0))
        assert not bool(state.fallback)
    assert float(state.alpha) == 1.5 and int(state.updates) == 100


def test_no_eviction_is_warned_once_per_episode(caplog):
    """Probation that has not qualified the selection after min_updates: one warning ('not started'); a later
    fall-back after evicting: one more ('stopped'); nothing while evicting or while the evidence is thin."""
    from lmdeploy_focus.strategies.dllm.alpha_controller import initial_state
    sdar, _ = tiny_model_and_reference('sdar', 8, num_layers=3,
                                       hf_overrides={'dllm_focus': {'enable_focus': True, 'focus_alpha': 'auto'}})
    runtime = sdar.model.delayed_cache_runtime
    config = runtime.focus.auto
    state = initial_state(config)
    tensor = torch.tensor

    def warnings_after(**fields):
        runtime.alpha_state = replace(state, **fields)
        caplog.clear()
        with caplog.at_level('INFO', logger='lmdeploy.focus'):
            runtime._log_auto()
        return [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']

    assert warnings_after(since_switch=tensor(config.min_updates - 1)) == []  # too little evidence yet
    first = warnings_after(since_switch=tensor(config.min_updates))
    assert len(first) == 1 and 'eviction not started' in first[0]
    assert warnings_after(since_switch=tensor(config.min_updates + 5)) == []  # same episode
    assert warnings_after(fallback=tensor(False), since_switch=tensor(40)) == []  # evicting
    stopped = warnings_after(fallbacks=tensor(1), since_switch=tensor(config.min_updates))
    assert len(stopped) == 1 and 'eviction stopped' in stopped[0]
    assert warnings_after(fallbacks=tensor(1), since_switch=tensor(50)) == []
