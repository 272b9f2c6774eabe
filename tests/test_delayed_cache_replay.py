"""The delayed-cache engine path (our SDAR / SDAR-MoE / LLaDA2 model classes on upstream modules, the runtime's
processing sets and state updates, the LM head on the rows still masked) replayed step by step on the
inputs of the plain-torch reference decode loop: same processed positions, same logits.

Runs on CPU through the harness (fp32) against the reference in fp64.
"""
from types import SimpleNamespace

import pytest
import torch

from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.models.step_state.delayed_cache_state import (DLLM_MASKED, DelayedCacheState, reset_rows,
                                                                starts_new_block)
from lmdeploy_focus.models.step_state.focus_state import FocusState
from lmdeploy_focus_dev.testing.families import prompts_clear_of_ties, tiny_model_and_reference
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

L = 8


@pytest.mark.parametrize('family, commit_mode, strategy, padded',
                         [('sdar', 'exact', 'low_confidence_static', False),
                          ('sdar', 'fast', 'low_confidence_static', False),
                          ('sdar', 'exact', 'sequential', False),
                          ('sdar', 'fast', 'sequential', False),
                          ('sdar', 'exact', 'low_confidence_static', True),
                          ('sdar', 'fast', 'sequential', True),
                          ('sdar', 'exact', 'low_confidence_dynamic', True),
                          ('sdar', 'fast', 'low_confidence_dynamic', False),
                          ('llada2', 'exact', 'low_confidence_static', False),
                          ('llada2', 'fast', 'sequential', True),
                          ('sdar_moe', 'exact', 'low_confidence_static', False)])
def test_engine_path_replays_the_reference_loop(family, commit_mode, strategy, padded):
    _replay(family, commit_mode, strategy, padded, sync_free=False)


@pytest.mark.parametrize('family, commit_mode, strategy, padded',
                         [('sdar', 'exact', 'low_confidence_static', True),
                          ('sdar', 'fast', 'low_confidence_dynamic', False),
                          ('llada2', 'exact', 'sequential', True)])
def test_a_sync_free_step_replays_the_reference_loop(family, commit_mode, strategy, padded):
    """A small batch's step that reads no counts (every slot through the LM head) takes the reference's decisions."""
    _replay(family, commit_mode, strategy, padded, sync_free=True)


@pytest.mark.parametrize('sync_free', [False, True])
@pytest.mark.parametrize('zero_padding', ['1', '0'])
def test_a_moe_models_padding_rows_leave_the_deep_layers_as_zeros(zero_padding, sync_free, monkeypatch):
    """Delayed cache alone on LLaDA2 (MoE): the deep layers start at the embedding, masked past the processed rows, so
    the padding rows are zeros through every layer (forced off: the embeddings of whatever ids those rows hold)."""
    from lmdeploy_focus.models import step_graphs
    monkeypatch.setenv(step_graphs.ZERO_PADDING_ENV, zero_padding)
    padding = []
    _replay('llada2', 'exact', 'low_confidence_static', True, sync_free=sync_free, padding_rows=padding)
    assert sum(rows.size(0) for rows in padding) > 0, 'no step ran padding rows: the test would check nothing'
    nonzero = sum(int(rows.abs().sum(-1).gt(0).sum()) for rows in padding)
    assert (nonzero == 0) == (zero_padding == '1'), f'{nonzero} non-zero padding rows'


def _replay(family, commit_mode, strategy, padded, sync_free, padding_rows=None):
    """``padding_rows`` (padded only): a list that gets, per step, the deep layers' output on the padding rows between
    the processed rows and the row bucket the step ran."""
    sdar, reference = tiny_model_and_reference(family, L,
                                               hf_overrides={'dllm_focus': {'enable_delayed_cache': True,
                                                                            'delayed_cache_commit': commit_mode}})
    runtime = sdar.model.delayed_cache_runtime
    # sync-free: no step reads its counts (every B*L slot gets the LM head); else every step reads (the row path)
    sdar.model.step_graphs.sync_free_rows = 4 * L if sync_free else 0
    mask_id = sdar.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=L // 2)
    seed, prompts, results = prompts_clear_of_ties(
        reference, (3, 11, 6), mask_id,  # lengths not multiples of L
        lambda prompts: reference_generate(reference, prompts, L, mask_id, unmasking, max_new_tokens=3 * L,
                                           delayed_cache=True, commit_mode=commit_mode, record_steps=True))
    seeds = f'weights seed {sdar.seed}, prompts seed {seed}'  # reproduces a failure
    steps = [[s for s in r.steps if s.kind == 'decode'] for r in results]
    num_steps = min(len(s) for s in steps)
    assert num_steps >= 2 * (L // 2)

    agent = DelayedCacheAgentStrategy(unmasking, mask_id, runtime)
    runner = sdar.new_runner(page_size=16)
    if padded:  # the CUDA-graph layout: a batch bucket above B, rows padded to a row bucket
        runner.capture_step_graphs([4])
    runner.prefill(prompts)
    B = len(prompts)
    state = DelayedCacheState.fresh(B, L)  # first decode step of a block is a warm-up
    for k in range(num_steps):
        records = [steps[b][k] for b in range(B)]
        for b, record in enumerate(records):
            assert record.history_length == runner.history_lengths[b], f'step {k} seq {b}: block start'
        blocks = torch.stack([r.input_ids for r in records])
        input_mask = torch.stack([r.input_mask for r in records])
        step_inputs = step_inputs_stub(delayed_state=state, focus_state=FocusState.fresh(B), next_rows_bound=None,
                                      extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
                                      model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        runtime.step_inputs = step_inputs
        ragged = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        step = runtime.step
        expected_processed = torch.stack([r.processed for r in records])
        assert torch.equal(step.fresh, expected_processed), f'{seeds} step {k}: processing sets differ'
        if padding_rows is not None:
            from lmdeploy_focus.models.step_graphs import pick
            graphs, processed = sdar.model.step_graphs, int(expected_processed.sum())
            bucket = step.deep_rows if sync_free else pick(graphs.buckets[4].deep, max(processed, 1))
            padding_rows.append(graphs._hidden[processed:bucket].clone())

        # the LM head ran on the rows still masked only (sync-free: on every slot, zero rows where no logits are
        # needed); the agent passes them to the sampler as they are
        assert step.sync_free == sync_free
        assert agent.slice_outputs(ragged, None) is ragged and ragged.size(0) == max(step.num_logit_rows, 1)
        dense = (ragged if sync_free else runtime.dense_logits(ragged)).view(B, L, -1)  # rows at their block slots
        for b, record in enumerate(records):
            rows = record.processed & (record.input_mask == DLLM_MASKED)  # the rows that get logits
            torch.testing.assert_close(dense[b][rows], record.logits[rows].float(), rtol=2e-4, atol=2e-4,
                                       msg=lambda m: f'{seeds} step {k} seq {b}: {m}')
            assert not dense[b][~rows].any(), f'{seeds} step {k} seq {b}: logits at a slot that needs none'
        runtime.end_step()

        # the step-inputs update (upstream's step_decode + ours): commit finished blocks
        next_mask = torch.stack([r.next_mask for r in records])
        committed = starts_new_block(next_mask.flatten(), L)
        state = reset_rows(step_inputs.delayed_state, committed)
        if committed.any():
            runner.commit_blocks([b for b in range(B) if committed[b]])
