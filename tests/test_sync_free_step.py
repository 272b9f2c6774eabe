"""The small-batch step that reads no row counts (``step_graphs.SYNC_FREE_ROWS``): its hidden states by slot, and
the switch. The decisions of such steps are checked against the reference loop in the replay tests
(``test_a_sync_free_step_replays_*``) and against each request alone in ``test_batch_lifecycle``."""
import secrets

import pytest
import torch

from lmdeploy_focus.models import step_graphs
from lmdeploy_focus.models.sparse_step import COUNTS, DeepRows, hidden_by_slot
from lmdeploy_focus.models.step_graphs import SYNC_FREE_ROWS_ENV, sync_free_rows


def _rows(slot, logit_rows, num_logit_rows):
    n = slot.numel()
    counts = torch.zeros(len(COUNTS), dtype=torch.long)
    counts[COUNTS.index('logit_rows')] = num_logit_rows
    zeros = torch.zeros(n, dtype=torch.long)
    return DeepRows(position_ids=zeros, slot=slot, q_start_loc=zeros, q_seqlens=zeros, kv_seqlens=zeros, counts=counts,
                    logit_rows=logit_rows)


@pytest.mark.parametrize('trial', range(4))
def test_hidden_by_slot_puts_the_rows_needing_logits_at_their_slots_and_zeros_elsewhere(trial):
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    batch, length, bucket, hidden_size = 3, 8, 4, 5
    slots = batch * length
    rows_total = bucket * length  # the bucket's static row list: valid rows first, padding after
    num_rows = int(torch.randint(1, slots + 1, (1, ), generator=gen))  # K: valid deep rows
    slot = torch.full((rows_total, ), -7, dtype=torch.long)  # padding rows' slots are arbitrary
    slot[:num_rows] = torch.randperm(slots, generator=gen)[:num_rows]
    needs = torch.rand(num_rows, generator=gen) < 0.6
    flagged = needs.nonzero().flatten()
    logit_rows = torch.randint(0, 10_000, (rows_total, ), generator=gen)  # past M: anything, even out of range
    logit_rows[:flagged.numel()] = flagged
    hidden = torch.randn(rows_total, hidden_size, generator=gen)
    hidden[num_rows:] = float('nan')  # padding rows may hold anything
    out = torch.full((slots + 1, hidden_size), 3.0)  # stale contents: rewritten whole

    got = hidden_by_slot(_rows(slot, logit_rows, flagged.numel()), hidden, out)

    expected = torch.zeros(slots, hidden_size)
    for r in flagged.tolist():
        expected[slot[r]] = hidden[r]
    assert got.shape == (slots, hidden_size) and got.data_ptr() == out.data_ptr()
    assert torch.equal(got, expected)


def test_hidden_by_slot_with_no_row_needing_logits_is_all_zeros():
    slot = torch.arange(8)
    hidden = torch.full((8, 2), float('nan'))
    got = hidden_by_slot(_rows(slot, torch.arange(8), 0), hidden, torch.ones(9, 2))
    assert torch.equal(got, torch.zeros(8, 2))


def test_the_sync_free_limit_comes_from_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(SYNC_FREE_ROWS_ENV, raising=False)
    assert sync_free_rows() == step_graphs.SYNC_FREE_ROWS
    monkeypatch.setenv(SYNC_FREE_ROWS_ENV, '0')
    assert sync_free_rows() == 0
    monkeypatch.setenv(SYNC_FREE_ROWS_ENV, '256')
    assert sync_free_rows() == 256
    for bad in ('-1', '4097', 'small', '1.5'):
        monkeypatch.setenv(SYNC_FREE_ROWS_ENV, bad)
        with pytest.raises(ValueError, match=SYNC_FREE_ROWS_ENV):
            sync_free_rows()


@pytest.mark.parametrize('family, moe', [('sdar', False), ('sdar_moe', True), ('llada2', True)])
def test_a_moe_model_zeroes_its_padding_rows(family, moe, monkeypatch):
    """The padding rows of a (sync-free) step reach a MoE model's experts too: there they are zeros."""
    from lmdeploy_focus_dev.testing.families import tiny_model_and_reference
    monkeypatch.delenv(SYNC_FREE_ROWS_ENV, raising=False)
    monkeypatch.delenv(step_graphs.ZERO_PADDING_ENV, raising=False)
    model, _ = tiny_model_and_reference(family, 8, hf_overrides={'dllm_focus': {'enable_delayed_cache': True}})
    assert model.model.step_graphs.sync_free_rows == step_graphs.SYNC_FREE_ROWS
    assert model.model.step_graphs.config.zero_padding == moe


def test_zero_padding_comes_from_the_environment_or_the_model(monkeypatch):
    monkeypatch.delenv(step_graphs.ZERO_PADDING_ENV, raising=False)
    assert step_graphs.zero_padding(moe=True) and not step_graphs.zero_padding(moe=False)
    monkeypatch.setenv(step_graphs.ZERO_PADDING_ENV, '0')
    assert not step_graphs.zero_padding(moe=True)
    monkeypatch.setenv(step_graphs.ZERO_PADDING_ENV, '1')
    assert step_graphs.zero_padding(moe=False)
    for bad in ('2', 'yes', '-1'):
        monkeypatch.setenv(step_graphs.ZERO_PADDING_ENV, bad)
        with pytest.raises(ValueError, match=step_graphs.ZERO_PADDING_ENV):
            step_graphs.zero_padding()


def test_the_limit_is_fixed_once_graphs_are_captured():
    """The slot graphs and their buffer are sized by the limit at capture: changing it later would index past them."""
    from lmdeploy_focus_dev.testing.families import tiny_model_and_reference
    model, _ = tiny_model_and_reference('sdar', 8, hf_overrides={'dllm_focus': {'enable_delayed_cache': True}})
    steps = model.model.step_graphs
    steps.sync_free_rows = 16  # before capture: fine
    model.new_runner(page_size=16).capture_step_graphs([2])
    assert steps.buckets[2].by_slot is not None
    with pytest.raises(RuntimeError, match='fixed once graphs are captured'):
        steps.sync_free_rows = 64
    steps.reset()
    steps.sync_free_rows = 64  # after a reset: captured again at the next warm-up
    assert steps.sync_free_rows == 64
