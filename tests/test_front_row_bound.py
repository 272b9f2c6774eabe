"""FOCUS's front (layers 0-1) on a row bucket ``P̂`` below ``B̂·L``: the bound on the next step's processed
rows that each step's counts carry, the front buckets, and the rerun when a bound is too small."""
import logging
import secrets
from dataclasses import dataclass, fields
from types import SimpleNamespace

import pytest
import torch

from lmdeploy.pytorch import consts
from lmdeploy_focus.models import step_graphs
from lmdeploy_focus.models.sparse_step import (StepConfig, StepInputs, copy_into, next_step_rows, processing_set,
                                               uncached_after)
from lmdeploy_focus.models.step_graphs import FRONT_BUCKETS_ENV, front_bucket_count, front_row_buckets, row_buckets
from lmdeploy_focus.models.step_state import focus_state
from lmdeploy_focus.models.step_state.delayed_cache_state import (DelayedCacheState, advance, reset_rows,
                                                                  starts_new_block)
from lmdeploy_focus.models.step_state.focus_step import FocusConfig
from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, build_tiny_sdar
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED
FOCUS = FocusConfig(alpha=1.5, policy='importance', shadow=False)


def _inputs(masked, state, seq_valid):
    B, L = masked.shape
    zeros = torch.zeros(B, dtype=torch.long)
    return StepInputs(input_ids=torch.zeros(B, L, dtype=torch.long), masked=masked, history=zeros,
                      uncached=state.uncached, needs_warmup=state.needs_warmup, seq_valid=seq_valid, progress=zeros - 1,
                      avg_decoded=torch.ones(B))


@pytest.mark.parametrize('commit_mode, per_step', [('exact', None), ('fast', None), ('exact', 1), ('exact', 2)])
def test_the_bound_covers_the_next_processing_set_and_is_exact_when_no_block_can_complete(commit_mode, per_step):
    """Random decode trajectories of the delayed-cache state machine (advance, commit, new block), one sequence
    at a time: the bound is >= the rows the sequence's next step processes, and equal to them unless the exact
    commit may follow (no more masked slots than decodable ones, nor than the unmasker's fixed tokens per step
    under static unmasking, ``per_step``: the bound then counts the whole block)."""
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    config = StepConfig(block_length=8, commit_mode=commit_mode, focus=FOCUS, decode_per_step=per_step)
    B, L = 6, config.block_length
    seq_valid = torch.rand(B, generator=gen) < 0.8
    seq_valid[0] = True
    state = DelayedCacheState.fresh(B, L)
    mask = torch.full((B, L), MASKED, dtype=torch.uint8)
    samples = exact = 0
    for step in range(60):
        masked = mask == MASKED
        inputs = _inputs(masked, state, seq_valid)
        # FOCUS gives logits to some of the masked rows (at least one); only those can be decoded
        decodable = torch.minimum(masked.sum(1), torch.randint(1, 4, (B, ), generator=gen))
        bounds = [int(next_step_rows(_row(inputs, b), config, decodable[b:b + 1], uncached_after(_row(inputs, b))))
                  for b in range(B)]
        assert int(next_step_rows(inputs, config, decodable, uncached_after(inputs))) == sum(bounds)
        # decode up to `decodable` masked slots per sequence, at random
        score = torch.rand(B, L, generator=gen).masked_fill(~masked, 2.0)
        rank = score.argsort(1).argsort(1)
        takes = torch.randint(0, 4, (B, 1), generator=gen).clamp(max=decodable[:, None])
        decoded = masked & (rank < (takes if per_step is None else takes.clamp(max=per_step)))
        # upstream's unmasker flags a block CACHED at the step whose input is all unmasked (both commit modes)
        next_mask = torch.where((mask != MASKED).all(1, keepdim=True), CACHED, torch.where(decoded, UNMASKED, mask))
        committed = starts_new_block(next_mask.flatten(), L)
        # the front's next-step state (the runtime keeps it) is advance()'s, the lifecycle's rule
        assert torch.equal(uncached_after(inputs), advance(state, mask.flatten()).uncached), f'seed {seed}'
        state = reset_rows(advance(state, mask.flatten()), committed)
        mask = torch.where(committed[:, None], MASKED, next_mask)
        proc = processing_set(_inputs(mask == MASKED, state, seq_valid), config)
        for b in range(B):
            rows, where = int(proc.q_seqlens[b]), f'seed {seed} step {step} seq {b}'
            assert rows <= bounds[b], where
            can_take = int(decodable[b]) if per_step is None else min(int(decodable[b]), per_step)
            may_commit_whole = commit_mode == 'exact' and int(masked[b].sum()) <= can_take
            if not may_commit_whole:
                assert rows == bounds[b], where
                exact += 1
            samples += 1
    assert exact > samples // 2, f'seed {seed}: the trajectories rarely test exactness ({exact} of {samples})'


def _row(inputs: StepInputs, b: int) -> StepInputs:
    """Sequence ``b`` of ``inputs`` alone."""
    return StepInputs(**{f.name: (None if getattr(inputs, f.name) is None else getattr(inputs, f.name)[b:b + 1])
                         for f in fields(inputs)})


def test_process_all_and_padding_sequences():
    config = StepConfig(block_length=4, commit_mode='exact', process_all=True, focus=FOCUS)
    masked = torch.ones(3, 4, dtype=torch.bool)
    inputs = _inputs(masked, DelayedCacheState.fresh(3, 4), torch.tensor([True, False, True]))
    assert int(next_step_rows(inputs, config, torch.zeros(3, dtype=torch.long), uncached_after(inputs))) == 2 * 4


def test_front_buckets_are_deep_buckets_and_end_at_every_row():
    for batch, length in [(1, 4), (4, 8), (16, 32), (64, 32), (256, 32), (256, 64)]:
        deep = row_buckets(batch, length)
        for count in (1, 3, 8, 64):
            front = front_row_buckets(deep, count)
            assert set(front) <= set(deep) and front[-1] == deep[-1] and len(front) <= count + 1
        assert front_row_buckets(deep, 1) == [batch * length]
    assert len(front_row_buckets(row_buckets(64, 32), 8)) == 8


def test_the_front_bucket_count_comes_from_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(FRONT_BUCKETS_ENV, raising=False)
    assert front_bucket_count() == step_graphs.FRONT_BUCKETS
    monkeypatch.setenv(FRONT_BUCKETS_ENV, '1')
    assert front_bucket_count() == 1
    for bad in ('0', '257', 'few'):
        monkeypatch.setenv(FRONT_BUCKETS_ENV, bad)
        with pytest.raises(ValueError, match=FRONT_BUCKETS_ENV):
            front_bucket_count()


@dataclass
class _Rows:
    index: torch.Tensor  # [R]
    hidden: torch.Tensor  # [R, 2]
    count: torch.Tensor  # 0-d


def test_copy_into_fills_the_first_rows_and_refuses_what_does_not_fit():
    static = _Rows(index=torch.zeros(6, dtype=torch.long), hidden=torch.zeros(6, 2), count=torch.tensor(0))
    copy_into(static, _Rows(index=torch.arange(1, 5), hidden=torch.ones(4, 2), count=torch.tensor(4)))
    assert static.index.tolist() == [1, 2, 3, 4, 0, 0] and static.hidden.sum() == 8 and int(static.count) == 4
    with pytest.raises(ValueError, match='index'):
        copy_into(static, _Rows(index=torch.arange(7), hidden=torch.ones(7, 2), count=torch.tensor(7)))
    with pytest.raises(ValueError, match='hidden'):
        copy_into(static, _Rows(index=torch.arange(2), hidden=torch.ones(2, 3), count=torch.tensor(2)))


@pytest.mark.parametrize('padded', [False, True])
def test_a_bound_below_the_processed_rows_reruns_the_front_on_every_row(padded, monkeypatch, caplog):
    """A too small bound (never produced by design) must not change a step: the counts flag it, the front
    reruns on all rows, and the step's logits and kept rows equal those of a step without a bound."""
    L = 8
    monkeypatch.setenv(step_graphs.SYNC_FREE_ROWS_ENV, '0')  # a small batch would not read the counts at all
    tiny = build_tiny_sdar(TinySDARShape(num_layers=3), block_length=L,
                           hf_overrides={'dllm_focus': {'enable_delayed_cache': True, 'enable_focus': True}})
    runtime, mask_id = tiny.model.delayed_cache_runtime, tiny.model_config.dllm_mask_token
    monkeypatch.setattr(step_graphs, 'ROW_ALIGN', 4)  # several front buckets at this tiny size
    results = []
    for bound in (None, 3):
        runner = tiny.new_runner(page_size=16)
        if padded:  # fresh graphs on this runner's KV cache (captured ones point at the first runner's)
            tiny.model.step_graphs.reset()
            runner.capture_step_graphs([4])
            assert len(tiny.model.step_graphs.buckets[4].front) > 2
        runner.prefill([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [7, 8]])
        blocks = runner.current_blocks()
        input_mask = torch.where(blocks == mask_id, focus_state.DLLM_MASKED, focus_state.DLLM_UNMASKED)
        runtime.step_inputs = step_inputs_stub(
            delayed_state=DelayedCacheState.fresh(3, L), focus_state=focus_state.FocusState.fresh(3),
            next_rows_bound=bound, extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
            model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        with caplog.at_level(logging.WARNING, logger='lmdeploy.focus'):
            logits = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        results.append((logits, runtime.step.fresh.clone(), runtime.step_inputs.next_rows_bound))
        runtime.end_step()
    (expected, fresh, next_bound), (got, got_fresh, got_next) = results
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)
    assert torch.equal(got_fresh, fresh) and got_next == next_bound
    assert 'front reran on every row' in caplog.text


def test_joining_sequences_raise_the_carried_bound_by_a_block_each():
    """``merge_prefill`` (sequences joining the decode batch) adds ``L`` per sequence to a known bound; an
    unknown one (None: the first decode step) stays unknown."""
    from lmdeploy.pytorch.engine.logits_process import SamplingInputsDelta
    from lmdeploy.pytorch.model_inputs import ModelInputs
    from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraOutputs
    from lmdeploy_focus.strategies.dllm.delayed_cache_step_inputs import DelayedCacheStepInputs
    from lmdeploy_focus.strategies.dllm.upstream_fixes import PaddingSafeDLLMStoppingCriteria
    L = 4

    def prefill_output(B):
        inputs = ModelInputs(input_ids=torch.randint(0, 50, (1, B * 6)), seq_length=torch.full((B, ), 6),
                             history_lengths=torch.zeros(B, dtype=torch.long), block_offsets=torch.zeros(B, 4),
                             is_decoding=False, num_ignored_history=torch.zeros(B, dtype=torch.long),
                             max_q_seqlen=6, max_kv_seqlen=6, sum_kv_seqlen=B * 6)
        delta = SamplingInputsDelta(num_ignore_eos=torch.zeros(B * L, dtype=torch.long),
                                    random_offsets=torch.zeros(B * L, dtype=torch.long))
        criteria = PaddingSafeDLLMStoppingCriteria(num_appendable_ids=torch.full((B, ), 9),
                                                   output_start_pos=torch.full((B, ), 6))
        mask = torch.full((B * L, ), MASKED, dtype=torch.uint8)
        return (inputs, None, criteria, delta, torch.randint(0, 50, (B * L, )), None, DLLMExtraOutputs(dllm_mask=mask))

    step_inputs = DelayedCacheStepInputs(_block_size=L, _dllm_mask_token=99)
    step_inputs.merge_prefill(*prefill_output(2))
    assert step_inputs.next_rows_bound is None
    step_inputs.next_rows_bound = 5  # as a decode step leaves it
    step_inputs.merge_prefill(*prefill_output(3))
    assert step_inputs.next_rows_bound == 5 + 3 * L and step_inputs.delayed_state.batch_size == 5


def test_reference_selection_on_a_front_cut_below_the_processed_rows():
    """The layout of a front on ``P̂`` rows below the processed ones: the sequences past the cut keep a
    ``q_start_loc`` at or past ``P̂`` and own no rows. The torch reference counts their candidates as 0 (as the
    CUDA kernel does) instead of indexing past the rows, and each sequence with rows selects as it would alone."""
    from lmdeploy_focus.kernels.default import focus as ref
    from lmdeploy_focus.models.step_state.processing_set import ProcessingSet, ragged_step_metadata
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    B, L = 4, 8
    mask = torch.rand(B, L, generator=gen) < 0.7
    mask[:, 0] = True
    proc = ProcessingSet.from_mask(mask)
    total = int(proc.total)
    last_start = total - int(mask[-1].sum())  # a cut at or before it leaves the last sequence no rows
    cut = int(torch.randint(1, last_start + 1, (), generator=gen))
    meta = ragged_step_metadata(proc, torch.zeros(B, dtype=torch.long), num_rows=cut)
    cand = torch.rand(cut, generator=gen) < 0.6
    owned = [(int(s), int(n)) for s, n in zip(meta.q_start_loc, meta.q_seqlens)]
    assert sum(n for _, n in owned) == cut and any(n == 0 and s >= cut for s, n in owned), f'seed {seed}'
    want = torch.tensor([int(cand[s:s + n].sum()) if n else 0 for s, n in owned])
    assert torch.equal(ref.count_candidates(cand, meta.q_start_loc, meta.q_seqlens), want), f'seed {seed}'
    delta, avg, progress = torch.rand(cut, generator=gen), torch.rand(B, generator=gen) * 3, torch.full((B, ), -1)
    pos = proc.block_pos[:cut]
    targets = ref.focus_targets(want, avg, 1.5)
    got = ref.select_kept(delta, cand, pos, meta.q_start_loc, meta.q_seqlens, targets, progress, max_q_len=L)
    # each sequence that owns rows selects as it would alone; the rest own none
    expected = torch.cat([ref.select_kept(delta[s:s + n], cand[s:s + n], pos[s:s + n], torch.tensor([0]),
                                          torch.tensor([n]), targets[i:i + 1], progress[i:i + 1], max_q_len=L)
                          for i, (s, n) in enumerate(owned) if n])
    assert torch.equal(got, expected), f'seed {seed}'


def test_recorded_progress_does_not_alias_the_steps_output():
    """Under CUDA graphs the step's progress is a view of the front graph's static output, which the next
    replay overwrites: the recorded state keeps its own copy."""
    B = 5
    state = focus_state.FocusState(progress=torch.full((B, ), -1), decoded_sum=torch.zeros(B),
                                   decoded_steps=torch.zeros(B))
    static_out = torch.randint(0, 8, (B, ))
    recorded = focus_state.record_step(state, static_out, torch.randint(0, 3, (B, )))
    want = static_out.clone()
    static_out.fill_(7)  # the next replay writes its outputs
    assert torch.equal(recorded.progress, want)
