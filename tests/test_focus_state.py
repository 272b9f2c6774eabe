"""Device-side FOCUS state: running average of decoded tokens, progress, per-block reset, batch edits."""
import torch

from lmdeploy.pytorch import consts
from lmdeploy_focus.models.step_state import focus_state as fs

M, U, C = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED


def test_running_average_counts_only_steps_that_decoded():
    state = fs.FocusState.fresh(3)
    assert torch.equal(state.avg_decoded(), torch.ones(3))  # no step yet: 1.0
    state = fs.record_step(state, torch.tensor([2, -1, 5]), torch.tensor([3, 0, 1]))
    state = fs.record_step(state, torch.tensor([4, -1, 5]), torch.tensor([0, 0, 2]))
    state = fs.record_step(state, torch.tensor([7, 3, 6]), torch.tensor([1, 0, 3]))
    # seq 0: (3 + 1) / 2 steps that decoded; seq 1: none -> 1.0; seq 2: (1 + 2 + 3) / 3
    torch.testing.assert_close(state.avg_decoded(), torch.tensor([2.0, 1.0, 2.0]))
    assert state.progress.tolist() == [7, 3, 6]


def test_reset_select_append_fresh():
    state = fs.record_step(fs.FocusState.fresh(3), torch.tensor([4, 5, 6]), torch.tensor([2, 2, 4]))
    reset = fs.reset_rows(state, torch.tensor([False, True, False]))
    assert reset.progress.tolist() == [4, -1, 6] and reset.avg_decoded().tolist() == [2.0, 1.0, 4.0]
    picked = fs.select(reset, torch.tensor([2, 0]))
    assert picked.progress.tolist() == [6, 4]
    joined = fs.append_fresh(picked, 2)
    fresh = fs.FocusState.fresh(2)
    for name in ('progress', 'decoded_sum', 'decoded_steps'):
        want = torch.cat([getattr(picked, name), getattr(fresh, name)])
        got = getattr(joined, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert joined.progress.tolist() == [6, 4, -1, -1] and joined.avg_decoded().tolist() == [4.0, 2.0, 1.0, 1.0]


def test_newly_decoded_is_masked_to_unmasked_only():
    before = torch.tensor([M, M, U, M, C, M])
    after = torch.tensor([U, M, U, U, C, C])
    assert fs.newly_decoded(before.view(-1, 3) == fs.DLLM_MASKED, after).tolist() == [[True, False, False],
                                                                                     [True, False, False]]
