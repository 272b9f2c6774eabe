"""The reference loop's folded commit (``commit_mode='folded'``, issue 14 item 4): ``exact``'s recomputation of a
finished block moved into the next block's first step. Same tokens, logits and history K/V as ``exact``, one step
fewer per committed block. The oracle a folded engine step would be replayed against; the engine has no such mode.
"""
import pytest
import torch
from test_reference_decode import (DYNAMIC, STATIC_4, fresh_model, gen, generate, random_prompts,  # noqa: F401 (gen)
                                   where)

from lmdeploy_focus.models.step_state.focus_step import FocusConfig
from lmdeploy_focus_dev.reference.dllm_decode import COMMIT_EXACT, COMMIT_FOLDED

ARMS = {'delayed': None, 'importance': FocusConfig(1.5, 'importance', False),
        'leftmost': FocusConfig(1.5, 'leftmost', False)}


def _runs(arm, unmasking, gen, L=4):
    tiny = fresh_model()
    prompts = random_prompts(gen, L, tiny.mask_token_id)
    runs = {mode: generate(tiny, prompts, L, delayed_cache=True, commit_mode=mode, focus=ARMS[arm],
                           unmasking=unmasking, max_new_tokens=4 * L + 1)
            for mode in (COMMIT_EXACT, COMMIT_FOLDED)}
    return tiny, prompts, runs


@pytest.mark.parametrize('unmasking', [DYNAMIC, STATIC_4], ids=['dynamic', 'static'])
@pytest.mark.parametrize('arm', list(ARMS))
def test_folded_commit_is_the_exact_commit_without_its_step(gen, arm, unmasking):
    tiny, prompts, runs = _runs(arm, unmasking, gen)
    L = 4
    for b in range(len(prompts)):
        msg = f'seq {b} {where(tiny, gen)}'
        exact, folded = runs[COMMIT_EXACT][b], runs[COMMIT_FOLDED][b]
        assert folded.token_ids == exact.token_ids and folded.all_token_ids == exact.all_token_ids, msg
        # every exact step but the commit steps has its folded twin: same logits (up to the fp32 attention),
        # same unmasker outputs
        exact_decode = [s for s in exact.steps if s.kind == 'decode']
        twins = [s for s in exact_decode if not s.is_commit]
        folded_decode = [s for s in folded.steps if s.kind == 'decode']
        commits = len(exact_decode) - len(twins)
        assert commits >= 1, msg  # every prompt here decodes past a block end
        assert folded.num_steps == exact.num_steps - commits and len(folded_decode) == len(twins), msg
        assert not any(s.is_commit for s in folded_decode), msg
        for x, y in zip(twins, folded_decode):
            assert (x.history_length, x.kv_length) == (y.history_length, y.kv_length), msg
            torch.testing.assert_close(y.logits.nan_to_num(), x.logits.nan_to_num(), rtol=1e-5, atol=1e-5, msg=msg)
            assert torch.equal(x.next_token_ids, y.next_token_ids) and torch.equal(x.next_mask, y.next_mask), msg
        # the history later blocks read: the same K/V in every layer (exact recomputed each block in its commit
        # step, folded next to the following block's first step)
        assert folded.history_length == exact.history_length, msg
        for layer, ((k, v), (ek, ev)) in enumerate(zip(folded.history_kv, exact.history_kv)):
            err = max(float((k - ek).abs().max()), float((v - ev).abs().max()))
            assert err < 1e-5, f'{msg} layer {layer}: history K/V differs from exact by {err}'
        # the rows: a commit step's L move into the following step, nothing else changes
        merged, carry = [], 0
        for rows, step in zip(exact.processed_per_step, exact_decode):
            if step.is_commit:
                carry += rows
            else:
                merged.append(rows + carry)
                carry = 0
        assert folded.processed_per_step == merged, msg


def test_folded_static_blocks_take_one_step_fewer(gen):
    """Static unmasking, L 16 in 4 steps: exact takes 4 steps and its commit step a block, folded 4."""
    tiny, L = fresh_model(), 16
    prompt = torch.randint(0, tiny.mask_token_id, (2 * L, ), generator=gen).tolist()  # block-aligned: no padding
    runs = {mode: generate(tiny, [prompt], L, delayed_cache=True, commit_mode=mode, unmasking=STATIC_4,
                           max_new_tokens=3 * L)[0] for mode in (COMMIT_EXACT, COMMIT_FOLDED)}
    assert runs[COMMIT_EXACT].token_ids == runs[COMMIT_FOLDED].token_ids, where(tiny, gen)
    # three blocks: exact 3 x 4 steps + 2 commit steps (the last block stops the sequence, no commit), folded 3 x 4
    assert (runs[COMMIT_EXACT].num_steps, runs[COMMIT_FOLDED].num_steps) == (14, 12), where(tiny, gen)


def test_folded_commit_needs_delayed_cache():
    tiny = fresh_model()
    with pytest.raises(AssertionError, match='delayed-cache'):
        generate(tiny, [[1, 2, 3]], 4, commit_mode=COMMIT_FOLDED)
