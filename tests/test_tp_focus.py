"""FOCUS with tensor parallelism, CPU side (issue 18): importance reduction and selection over 2 gloo ranks,
the kept-layout divergence detector (LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1), and the TP opt-in at config time.

Why exact equality with one process is the right assertion: the selection runs on the reduced delta,
so ranks and the single process could only disagree if their deltas differed, i.e. if the sums over
heads rounded differently. The test data makes every per-head importance a multiple of 1/4
(``lmdeploy_focus_dev.testing.tp_gloo``), so every sum is exact in any order; the test asserts that the
deltas agree bit for bit, and then that kept sets and layouts are identical, ties included.
"""
import logging
from types import SimpleNamespace

import pytest
import torch

from lmdeploy_focus.config import compat
from lmdeploy_focus.models import importance_reduce, tp_layout_check
from lmdeploy_focus_dev.testing import tp_gloo
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub


def test_two_gloo_ranks_select_exactly_what_one_process_selects_over_all_heads():
    seed = tp_gloo.new_seed()
    try:
        tp_gloo.spawn(tp_gloo.selection_matches_one_process, seed, 40)
    except Exception as error:  # the rank's traceback names seed and trial too
        raise AssertionError(f'seed {seed}: {error}') from error


def test_the_layout_check_raises_on_every_rank_exactly_at_the_step_where_a_rank_diverges():
    seed = tp_gloo.new_seed()
    try:
        tp_gloo.spawn(tp_gloo.layout_check, seed)
    except Exception as error:
        raise AssertionError(f'seed {seed}: {error}') from error


def test_the_exact_test_data_is_on_a_quarter_grid_and_not_all_tied():
    """The exact data is what makes the comparison with one process meaningful: check it is exact
    (multiples of 1/4) and still spreads the candidates (not all tied)."""
    gen = torch.Generator().manual_seed(tp_gloo.new_seed())
    step = tp_gloo.random_step(gen)
    delta = tp_gloo.local_delta(step, slice(None), slice(None))
    assert torch.equal(delta * 4, (delta * 4).round())
    assert delta[step.candidate].unique().numel() > 3


def test_layout_checksum_sees_any_change_of_the_layout():
    gen = torch.Generator().manual_seed(tp_gloo.new_seed())
    step = tp_gloo.random_step(gen, exact=False)
    _, layout = tp_gloo.select(step, tp_gloo.local_delta(step, slice(None), slice(None)))
    base = int(tp_layout_check.layout_checksum(layout))
    src = layout.src_row.clone()
    src[[0, 1]] = src[[1, 0]]
    assert int(tp_layout_check.layout_checksum(SimpleNamespace(**{**vars(layout), 'src_row': src}))) != base
    for name in ('q_seqlens', 'kv_seqlens', 'progress', 'q_start_loc'):
        changed = getattr(layout, name).clone()
        changed[-1] += 1
        assert int(tp_layout_check.layout_checksum(SimpleNamespace(**{**vars(layout), name: changed}))) != base, name
    assert tp_layout_check.all_ranks_checksums(layout, tp_size=1) is None  # TP 1: nothing to compare


# ---- the hook in the engine's decode step (one process, the other rank simulated) -------------------

L = 8


class _FakeTP:
    """``importance_reduce._all_reduce`` for a simulated second rank that holds the same heads (so the
    summed delta is twice this rank's: the same selection) and, if ``diverge_at``, a different
    kept-layout checksum at that decode step."""

    def __init__(self, diverge_at=None):
        self.diverge_at = diverge_at
        self.calls = []

    def __call__(self, tensor, op=torch.distributed.ReduceOp.SUM, group=None):
        self.calls.append(op)
        if op == torch.distributed.ReduceOp.SUM:
            tensor.mul_(2)
        elif tp_layout_check._checked_steps + 1 == self.diverge_at:  # verify() counts the steps
            tensor[0] += 1  # the other rank's checksum is larger


def _decode_steps(monkeypatch, fake, check: bool, padded: bool, steps: int = 2):
    from lmdeploy_focus.models.step_state import focus_state
    from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
    from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, build_tiny_sdar

    if check:
        monkeypatch.setenv(tp_layout_check.ENV, '1')
    else:
        monkeypatch.delenv(tp_layout_check.ENV, raising=False)
    tp_layout_check.requested.cache_clear()
    monkeypatch.setattr(tp_layout_check, '_checked_steps', 0)
    monkeypatch.setattr(importance_reduce, 'attention_tp_size', lambda: 2)
    monkeypatch.setattr(importance_reduce, '_all_reduce', fake)
    tiny = build_tiny_sdar(TinySDARShape(num_layers=3), block_length=L,
                           hf_overrides={'dllm_focus': {'enable_delayed_cache': True, 'enable_focus': True}})
    runtime, runner = tiny.model.delayed_cache_runtime, tiny.new_runner(page_size=16)
    if padded:  # the CUDA-graph path (static buffers, the graph's outputs), eagerly on CPU
        runner.capture_step_graphs([4])
    runner.prefill([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    mask_id = tiny.model_config.dllm_mask_token
    blocks = runner.current_blocks()
    input_mask = torch.where(blocks == mask_id, focus_state.DLLM_MASKED, focus_state.DLLM_UNMASKED)
    runtime.step_inputs = step_inputs_stub(
        delayed_state=DelayedCacheState.fresh(2, L), focus_state=focus_state.FocusState.fresh(2), next_rows_bound=None,
        extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
        model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
    try:
        for _ in range(steps):
            runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
    finally:
        tp_layout_check.requested.cache_clear()


@pytest.mark.parametrize('padded', [False, True])
def test_decode_step_checks_the_layout_only_when_asked(monkeypatch, padded):
    fake = _FakeTP()
    _decode_steps(monkeypatch, fake, check=False, padded=padded)
    assert torch.distributed.ReduceOp.MAX not in fake.calls  # no extra collective on the common path
    assert fake.calls.count(torch.distributed.ReduceOp.SUM) >= 2  # the importance reduction ran
    fake = _FakeTP()
    _decode_steps(monkeypatch, fake, check=True, padded=padded)  # ranks agree: no error
    assert fake.calls.count(torch.distributed.ReduceOp.MAX) == fake.calls.count(torch.distributed.ReduceOp.SUM)


@pytest.mark.parametrize('padded', [False, True])
def test_decode_step_raises_naming_the_step_where_the_ranks_diverge(monkeypatch, padded):
    expected = rf'differs across attention TP ranks at decode step 2 .*{tp_layout_check.ENV}=1'
    with pytest.raises(RuntimeError, match=expected):
        _decode_steps(monkeypatch, _FakeTP(diverge_at=2), check=True, padded=padded, steps=3)


# ---- config: TP > 1 refused unless LMDEPLOY_FOCUS_ALLOW_TP=1 -----------------------------------------


@pytest.mark.parametrize('flag', ['dllm_enable_focus', 'dllm_enable_delayed_cache'])
def test_tp_is_refused_by_default_naming_the_opt_in_and_why(monkeypatch, flag):
    from lmdeploy import PytorchEngineConfig
    monkeypatch.delenv(compat.ALLOW_TP_ENV, raising=False)
    with pytest.raises(ValueError) as error:
        PytorchEngineConfig(**{flag: True}, tp=2)
    message = str(error.value)
    assert 'LMDEPLOY_FOCUS_ALLOW_TP=1' in message and 'never run on GPUs' in message and 'tp=1' in message


def test_tp_is_accepted_with_the_opt_in_and_a_warning(monkeypatch, focus_logs):
    import lmdeploy_focus.log
    from lmdeploy import PytorchEngineConfig
    monkeypatch.setattr(lmdeploy_focus.log, '_logged_once', set())
    monkeypatch.setenv(compat.ALLOW_TP_ENV, '1')
    cfg = PytorchEngineConfig(dllm_enable_focus=True, tp=2)
    assert cfg.tp == 2 and cfg.hf_overrides['dllm_focus']['enable_focus'] is True
    warnings = [m for m in focus_logs.messages(logging.WARNING) if compat.ALLOW_TP_ENV in m]
    assert len(warnings) == 1 and 'unverified' in warnings[0] and 'tp=2' in warnings[0]
    monkeypatch.setenv(compat.ALLOW_TP_ENV, '0')  # only '1' opts in
    with pytest.raises(ValueError, match=compat.ALLOW_TP_ENV):
        PytorchEngineConfig(dllm_enable_focus=True, tp=2)


def test_a_tp_rank_that_does_not_sample_does_the_steps_bookkeeping_from_rank_0s_mask(monkeypatch):
    """Only the first attention-TP rank runs post_sampling; the others must update their FOCUS state
    from the broadcast next mask, or their kept rows drift from rank 0's within a block."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    import torch
    from lmdeploy.pytorch.config import DLLMConfig
    from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy
    from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime

    rank0_mask = torch.tensor([1, 1, 0, 0], dtype=torch.uint8)

    @contextmanager
    def fake_broadcast(self, next_token_ids, extra_inputs, dist_ctx):  # rank 0's mask arrives in place
        yield None
        extra_inputs.dllm_mask.copy_(rank0_mask)

    monkeypatch.setattr(DLLMModelAgentStrategy, 'broadcast_next_token', fake_broadcast)
    runtime = DelayedCacheRuntime(block_length=4)
    calls = []
    runtime.after_unmasking = lambda next_mask: calls.append(next_mask.clone())
    agent = DelayedCacheAgentStrategy(DLLMConfig(block_length=4), 99, runtime)

    # in flight (its input mask was read into the step by run_step, before the broadcast overwrites the mask)
    runtime.step = SimpleNamespace(num_rows=3, num_logit_rows=2, batch_size=1, block_length=4, deep_rows=None)
    input_mask = torch.tensor([1, 0, 0, 0], dtype=torch.uint8)
    extra = SimpleNamespace(dllm_mask=input_mask.clone())
    inputs = SimpleNamespace(input_ids=torch.zeros(1, 4, dtype=torch.long))
    agent.make_dummy_next_token(inputs, torch.zeros(4, 8), extra)
    with agent.broadcast_next_token(None, extra, None):
        pass
    assert len(calls) == 1 and torch.equal(calls[0], rank0_mask)
    assert runtime.step is None and runtime.steps == 1  # the step ended (and was counted) on this rank too

    # the real bookkeeping on this rank counts what rank 0 decoded from the step's own input (slot 1: MASKED
    # in the input, UNMASKED in rank 0's mask), although the broadcast overwrote the mask in place
    from lmdeploy_focus.strategies.dllm.run_stats import RunStats
    del runtime.after_unmasking
    runtime.stats = RunStats()
    runtime.step = SimpleNamespace(num_rows=3, num_logit_rows=2, batch_size=1, block_length=4, focus=None, deep_rows=None,
                                   masked=(input_mask == 0).view(1, 4),  # 0: DLLM_MASKED
                                   processed_per_seq=torch.tensor([3]),
                                   kept_per_seq=torch.tensor([3]))
    extra = SimpleNamespace(dllm_mask=input_mask.clone())
    agent.make_dummy_next_token(inputs, torch.zeros(4, 8), extra)
    with agent.broadcast_next_token(None, extra, None):
        pass
    totals = runtime.stats.read()
    assert totals['generated_tokens'] == 1 and totals['decode_steps'] == 1 and runtime.step is None

    # rank 0 ended its step in post_sampling: the broadcast does nothing more there
    extra = SimpleNamespace(dllm_mask=input_mask.clone())
    with agent.broadcast_next_token(None, extra, None):
        pass
    assert len(calls) == 1
