"""FOCUS through the engine path (our SDAR / SDAR-MoE / LLaDA2 model classes on upstream modules, the runtime, the
eviction inside layer 1, the LM head and sampler on the kept masked rows, guarded unmasking and state updates) replayed step by
step against the plain-torch reference decode loop with FOCUS: same kept rows, same logits at the
kept rows, same unmasking decisions, for both selection policies, shadow mode and commit modes.

CPU (fp32 engine path vs fp64 reference). The selection is recomputed on each side from its own
importance, so a kept-set mismatch would also catch importance wired to the wrong q/k.
"""
import secrets
from dataclasses import replace
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.engine.logits_process import SamplingInputs
from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
from lmdeploy_focus.models import step_graphs
from lmdeploy_focus.models.step_state import focus_state, shadow_schedule
from lmdeploy_focus.strategies.dllm.alpha_controller import AlphaControllerConfig
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState, reset_rows, starts_new_block
from lmdeploy_focus.models.step_state.focus_step import FocusConfig
from lmdeploy_focus.strategies.dllm.run_stats import KEYS
from lmdeploy_focus_dev.testing.families import prompts_clear_of_ties, tiny_model_and_reference
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

L = 8


def _replay(policy, shadow, commit_mode, strategy, alpha=1.5, num_layers=3, padded=False, family='sdar',
            sync_free=False, padding_rows=None, on_model=None):
    """``alpha='auto'``: the engine's controller and shadow schedule against the reference loop driving
    the same ones (``reference/auto_alpha``), one shadow step in two, a controller quick to move.
    ``padding_rows`` (padded only): a list that gets, per step, the deep layers' output on the padding rows
    between the kept rows and the row bucket the step ran, and the step's processed rows (the front's valid ones).
    ``on_model(model)``: called once the tiny model is built (hooks)."""
    options = {'enable_delayed_cache': True, 'enable_focus': True, 'focus_alpha': alpha, 'focus_policy': policy,
               'focus_shadow': shadow, 'track': True, 'delayed_cache_commit': commit_mode}
    if alpha == 'auto':
        options['focus_auto_shadow_every'] = 2
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=L // 2, confidence_threshold=0.2)
    sdar, reference = tiny_model_and_reference(family, L, num_layers=num_layers, hf_overrides={'dllm_focus': options},
                                               dllm_config=unmasking)
    runtime = sdar.model.delayed_cache_runtime
    # sync-free: no step reads its counts (every B*L slot gets the LM head); else every step reads (the row path)
    sdar.model.step_graphs.sync_free_rows = 4 * L if sync_free else 0
    if on_model is not None:
        on_model(sdar.model)
    if alpha == 'auto':
        runtime.focus = replace(runtime.focus, auto=AlphaControllerConfig(target_recall=0.3, gain=2.0,
                                                                                 probation=False))
    else:
        assert runtime.focus == FocusConfig(alpha=alpha, policy=policy, shadow=shadow)
    mask_id = sdar.model_config.dllm_mask_token
    seed, prompts, results = prompts_clear_of_ties(
        reference, (3, 11, 6), mask_id,
        lambda prompts: reference_generate(reference, prompts, L, mask_id, unmasking, max_new_tokens=3 * L,
                                           delayed_cache=True, commit_mode=commit_mode, record_steps=True,
                                           focus=runtime.focus))
    seeds = f'weights seed {sdar.seed}, prompts seed {seed}'  # reproduces a failure
    steps = [[s for s in r.steps if s.kind == 'decode'] for r in results]
    num_steps = min(len(s) for s in steps)

    agent = DelayedCacheAgentStrategy(unmasking, mask_id, runtime)
    runner = sdar.new_runner(page_size=16)
    if padded:  # the CUDA-graph layout: a batch bucket above B, front and deep rows padded to row buckets
        with mock.patch.object(step_graphs, 'ROW_ALIGN', 4):  # row buckets of 4: fronts below B̂·L get used
            runner.capture_step_graphs([4])
    runner.prefill(prompts)
    B = len(prompts)
    delayed, focus = DelayedCacheState.fresh(B, L), focus_state.FocusState.fresh(B)
    countdown = shadow_schedule.fresh(B, 2, seed=0, first_index=0) if alpha == 'auto' else None
    evicted_steps, bound, bounded_steps = 0, None, 0
    for k in range(num_steps):
        records = [steps[b][k] for b in range(B)]
        blocks = torch.stack([r.input_ids for r in records])
        input_mask = torch.stack([r.input_mask for r in records])
        step_inputs = step_inputs_stub(delayed_state=delayed, focus_state=focus, shadow_countdown=countdown,
                                      next_rows_bound=bound,
                                      extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
                                      model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        runtime.step_inputs = step_inputs
        ragged = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        step = runtime.step
        kept = torch.stack([r.kept for r in records])
        processed = torch.stack([r.processed for r in records])
        assert torch.equal(step.focus.candidate_dense, processed & (input_mask == focus_state.DLLM_MASKED))
        assert torch.equal(step.fresh, kept), f'{seeds} step {k}: kept rows differ'
        evicted_steps += int((processed & ~kept).any())
        if padding_rows is not None:
            graphs = sdar.model.step_graphs
            deep_bucket = step.deep_rows if sync_free else step_graphs.pick(graphs.buckets[4].deep, max(int(kept.sum()), 1))
            padding_rows.append((graphs._hidden[int(kept.sum()):deep_bucket].clone(), int(processed.sum())))
        # the LM head ran on the kept masked rows only; the sampler gets those rows (not B*L); sync-free: every
        # slot, zero logits where no fresh ones are needed
        assert step.sync_free == sync_free
        assert agent.slice_outputs(ragged, None) is ragged and ragged.size(0) == max(step.num_logit_rows, 1)
        dense = (ragged if sync_free else runtime.dense_logits(ragged)).view(B, L, -1)
        for b, record in enumerate(records):
            rows = record.kept & (record.input_mask == focus_state.DLLM_MASKED)  # the rows that get logits
            torch.testing.assert_close(dense[b][rows], record.logits[rows].float(), rtol=2e-4, atol=2e-4,
                                       msg=lambda m: f'{seeds} step {k} seq {b}: {m}')
            assert not dense[b][~rows].any(), f'{seeds} step {k} seq {b}: logits at a slot that needs none'
        # the agent's own unmasking (guarded) and bookkeeping must reproduce the reference's decisions
        logits, sampling = agent.sampling_rows(ragged, SamplingInputs(batch_size=B * L, max_num_logprobs=-1))
        assert logits is ragged and sampling.batch_size == ragged.size(0)
        extra = SimpleNamespace(dllm_mask=input_mask.flatten().clone())
        next_ids, extra = agent.post_sampling(SimpleNamespace(input_ids=blocks.flatten()), logits,
                                              logits.argmax(-1), extra)
        next_mask = torch.stack([r.next_mask for r in records])
        assert torch.equal(extra.dllm_mask.view(B, L), next_mask), f'{seeds} step {k}: unmasking differs'
        assert runtime.step is None
        # per-request statistics: the step's counts per sequence leave with the extra outputs
        counts = agent.make_extra_outputs(extra).dllm_stats
        for b, record in enumerate(records):
            row = dict(zip(KEYS, counts[b].tolist()))
            decoded = (record.input_mask == focus_state.DLLM_MASKED) & (record.next_mask == focus_state.DLLM_UNMASKED)
            assert (row['decode_steps'], row['generated_tokens']) == (1, int(decoded.sum())), f'step {k} seq {b}'
            assert (row['processed_tokens'], row['deep_tokens']) == (int(record.processed.sum()),
                                                                     int(record.kept.sum())), f'step {k} seq {b}'
        committed = starts_new_block(next_mask.flatten(), L)
        delayed = reset_rows(step_inputs.delayed_state, committed)
        focus = focus_state.reset_rows(step_inputs.focus_state, committed)
        countdown = step_inputs.shadow_countdown
        processed_rows = int(processed.sum())
        assert bound is None or processed_rows <= bound, f'{seeds} step {k}: {processed_rows} rows, bound {bound}'
        bounded_steps += bound is not None
        bound = step_inputs.next_rows_bound
        if committed.any():
            runner.commit_blocks([b for b in range(B) if committed[b]])
    # a step that reads its counts carries a bound to the next one (the first has none); a sync-free step reads
    # nothing and carries none (StepGraphs.run)
    assert bounded_steps == (0 if sync_free else num_steps - 1), f'{seeds}: {bounded_steps} of {num_steps} steps'
    return runtime, results, evicted_steps


STATIC, DYNAMIC = 'low_confidence_static', 'low_confidence_dynamic'


@pytest.mark.parametrize('family, policy, commit_mode, padded, strategy',
                         [('sdar', 'importance', 'exact', False, STATIC),
                          ('sdar', 'importance', 'fast', False, STATIC),
                          ('sdar', 'leftmost', 'exact', False, STATIC),
                          ('sdar', 'leftmost', 'fast', False, STATIC),
                          ('sdar', 'importance', 'exact', True, STATIC),
                          ('sdar', 'leftmost', 'fast', True, STATIC),
                          ('sdar', 'importance', 'exact', True, DYNAMIC),
                          ('sdar', 'leftmost', 'fast', True, DYNAMIC),
                          ('llada2', 'importance', 'exact', False, STATIC),
                          ('llada2', 'leftmost', 'fast', True, STATIC),
                          ('sdar_moe', 'importance', 'exact', False, STATIC)])
def test_engine_path_replays_the_reference_focus_loop(family, policy, commit_mode, padded, strategy):
    runtime, results, evicted_steps = _replay(policy, False, commit_mode, strategy, padded=padded, family=family)
    assert evicted_steps > 0, 'the replay never evicted anything: the test would not exercise FOCUS'
    stats = runtime.stats.read()
    processed = sum(sum(r.processed_per_step) for r in results)
    assert stats['deep_tokens'] < stats['processed_tokens'] <= processed
    assert stats['shadow_decoded'] == 0  # recall is a shadow-mode measure (trivially 1 when evicting)


def _recording_attention(monkeypatch):
    """What every attention call of the step asks the kernel for (``zero_padding``): the CPU reference attention
    zeroes unowned rows whatever it is told, so the rows alone cannot show a flag that was not passed."""
    from lmdeploy_focus.models import delayed_cache_attention, sparse_step
    asked = []

    def recording(original):
        def attention(*args, zero_padding=False, **kwargs):
            asked.append(zero_padding)
            return original(*args, zero_padding=zero_padding, **kwargs)
        return attention

    for module in (sparse_step, delayed_cache_attention):
        monkeypatch.setattr(module, 'ragged_attention', recording(module.ragged_attention))
    return asked


def _nonzero_rows(rows):
    return int(rows.abs().sum(-1).gt(0).sum())


@pytest.mark.parametrize('family, sync_free', [('llada2', False), ('llada2', True), ('sdar_moe', True)])
@pytest.mark.parametrize('zero_padding', ['1', '0'])
def test_a_moe_models_padding_rows_are_zeros(family, zero_padding, sync_free, monkeypatch):
    """MoE: the padding rows are zeros where they meet an MLP / the experts, in the front (layer 0's MLP input past the
    processed rows) and after the deep layers (past the kept rows), so they all route to one set of experts; the kept
    rows' decisions are the reference's (the replay's checks). Forced off, they hold other rows' values."""
    monkeypatch.setenv(step_graphs.ZERO_PADDING_ENV, zero_padding)
    asked = _recording_attention(monkeypatch)
    front_mlp_inputs = []

    def hook_layer0_mlp(model):
        # decode steps only (not the prefill, nor the warm-up captures); with FOCUS layer 0 runs in the front alone
        graphs, in_step = model.step_graphs, []
        run = graphs.run

        def step_run(*args, **kwargs):
            in_step.append(True)
            try:
                return run(*args, **kwargs)
            finally:
                in_step.pop()

        graphs.run = step_run

        def record(module, args):
            if in_step:
                front_mlp_inputs.append(args[0].reshape(-1, args[0].size(-1)).clone())

        model.model.layers[0].mlp.register_forward_pre_hook(record)

    padding = []
    _replay('importance', False, 'exact', STATIC, padded=True, family=family, sync_free=sync_free,
            padding_rows=padding, on_model=hook_layer0_mlp)
    assert len(front_mlp_inputs) == len(padding)
    front_padding = [rows[processed:] for rows, (_, processed) in zip(front_mlp_inputs, padding)]
    deep_padding = [rows for rows, _ in padding]
    for name, rows in (('front', front_padding), ('deep', deep_padding)):
        assert sum(r.size(0) for r in rows) > 0, f'no step ran {name} padding rows: the test would check nothing'
        nonzero = sum(_nonzero_rows(r) for r in rows)
        assert (nonzero == 0) == (zero_padding == '1'), f'{name}: {nonzero} non-zero padding rows'
    # every attention of the step (front layer 0, deep layer 1, the deep layers' own) zeroes unowned rows, or none
    assert asked and set(asked) == {zero_padding == '1'}


@pytest.mark.parametrize('family, policy, commit_mode, padded, strategy',
                         [('sdar', 'importance', 'exact', True, STATIC),
                          ('sdar', 'leftmost', 'fast', False, DYNAMIC),
                          ('llada2', 'importance', 'exact', True, STATIC),
                          ('sdar_moe', 'importance', 'fast', False, STATIC)])
def test_a_sync_free_step_replays_the_reference_focus_loop(family, policy, commit_mode, padded, strategy):
    """A small batch's step that reads no counts (deep layers on a padded bucket, LM head on every slot) takes the
    reference's decisions: the same kept rows, logits, unmasking and statistics."""
    runtime, results, evicted_steps = _replay(policy, False, commit_mode, strategy, padded=padded, family=family,
                                              sync_free=True)
    assert evicted_steps > 0
    stats = runtime.stats.read()
    assert stats['deep_tokens'] < stats['processed_tokens']  # FOCUS's decisions, not the padded work


@pytest.mark.parametrize('family, padded', [('sdar', False), ('sdar', True), ('llada2', False)])
def test_engine_path_replays_the_reference_loop_under_auto_alpha(family, padded):
    """--dllm-focus-alpha auto: same shadow sequences, same per-sequence α, hence the same kept rows and
    logits at every step, while the controller moves α (a low target: α falls, so the non-shadow
    sequences keep evicting; a high one would lift α until nothing is evicted)."""
    runtime, results, evicted_steps = _replay('importance', False, 'exact', 'low_confidence_static', alpha='auto',
                                              padded=padded, family=family)
    assert evicted_steps > 0
    stats = runtime.stats.read()
    assert stats['auto_shadow_steps'] > 0 and stats['shadow_decoded'] > 0, 'no informative shadow step'
    report = runtime.auto_alpha_report()
    assert report['updates'] > 0 and report['alpha'] != 1.5


def test_shadow_mode_keeps_every_row_and_records_the_selection():
    runtime, results, evicted_steps = _replay('importance', True, 'exact', 'low_confidence_dynamic')
    assert evicted_steps == 0
    stats = runtime.stats.read()
    assert stats['deep_tokens'] == stats['processed_tokens']
    assert stats['shadow_selected_decoded'] <= stats['shadow_decoded']
    assert stats['candidates'] > 0


def test_alpha_at_block_length_matches_delayed_cache_alone():
    """Nothing is evicted when alpha >= L: FOCUS must reproduce delayed cache token for token."""
    sdar, reference = tiny_model_and_reference('sdar', L, num_layers=3)
    mask_id = sdar.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC,
                           denoising_steps=L, confidence_threshold=0.3)
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    prompts = [torch.randint(0, mask_id, (n, ), generator=gen).tolist() for n in (5, 9)]
    common = dict(max_new_tokens=3 * L, delayed_cache=True, commit_mode='exact')
    plain = reference_generate(reference, prompts, L, mask_id, unmasking, **common)
    focus = reference_generate(reference, prompts, L, mask_id, unmasking, focus=FocusConfig(float(L), 'importance',
                                                                                            False), **common)
    for a, b in zip(plain, focus):
        assert a.token_ids == b.token_ids
        assert a.processed_per_step == b.processed_per_step == b.kept_per_step


def test_unmasking_margins_see_the_close_calls_the_engine_may_split():
    """prompts_clear_of_ties redraws on these (CI drew weights 103972410 / prompts 828680609, where the fp32 engine
    unmasked slot 1 and the fp64 reference slot 2): an argmax tie, a confidence on the threshold, two equal
    confidences each give a zero margin; distinct ones give none."""
    import math

    from lmdeploy_focus_dev.reference.dllm_decode import MASKED, unmasking_margins
    mask = torch.full((1, 3), MASKED)
    fresh, active = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, dtype=torch.bool)
    clear = torch.tensor([[[4.0, 1.0, 0.0], [2.0, 0.0, 0.5], [0.0, 3.0, 1.5]]])
    assert min(unmasking_margins(clear, mask, fresh, active, threshold=0.01)) > 1e-3
    argmax_tie = clear.clone()
    argmax_tie[0, 1, 2] = 2.0
    equal_confidences = clear.clone()
    equal_confidences[0, 2] = clear[0, 0].roll(1)
    on_threshold = math.exp(clear[0, 0].double().log_softmax(-1).max().item())
    for logits, threshold in ((argmax_tie, 0.01), (equal_confidences, 0.01), (clear, on_threshold)):
        assert min(unmasking_margins(logits, mask, fresh, active, threshold)) < 1e-9, threshold
    assert unmasking_margins(clear, mask, torch.zeros(1, 3, dtype=torch.bool), active, 0.01) == []  # no fresh rows
