"""A request's repetition penalty, n-gram filter and min_new_tokens act on its own output, whatever its batch
neighbours have generated (strategies/dllm/upstream_fixes/own_history.py). Found by a bug hunt (2026-12-07):
next to a neighbour with tokens out, a first-block request with ``repetition_ngram_size`` answered nothing, and
a penalised one's chance of stopping moved; ``min_new_tokens=1`` forced a whole block of text."""
import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmdeploy.messages import GenerationConfig
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig
from lmdeploy.pytorch.engine.logits_process import FusedLogitsProcessor
from lmdeploy.pytorch.messages import SamplingParam
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy
from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMSamplingStrategy

V, PAD, EOS, MASK = 300, 256, 258, 299  # the tiny SDAR's bos (upstream's pad id) is also one of its stop words


def _gen():
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))


def _seq(i, generated, prompt=10, **config):
    config.setdefault('stop_token_ids', [EOS, PAD])
    config.setdefault('temperature', 1.0)
    param = SamplingParam.from_gen_config(GenerationConfig(top_k=1, **config))
    ids = np.asarray(generated, dtype=np.int64)
    return SimpleNamespace(sampling_param=param, num_valid_ids=prompt + len(ids), session=SimpleNamespace(session_id=i),
                           seq_id=i, num_new_tokens=len(ids), generated_ids=ids, valid_ids=np.arange(prompt + len(ids)))


def _scores(seqs, block, logits):
    inputs = FixedDLLMSamplingStrategy(PAD, block, mask_token=MASK).make_sampling_inputs(seqs).to_device('cpu')
    scores, _ = asyncio.run(FusedLogitsProcessor(inputs)(logits[:len(seqs) * block].clone()))
    return scores


def _neighbour(gen, n_tokens):
    return _seq(9, torch.randint(0, 200, (n_tokens, ), generator=gen).tolist())


@pytest.mark.parametrize('own', [0, 2, 5])
def test_a_requests_ngram_filter_and_penalty_do_not_depend_on_a_longer_neighbour(own):
    """Request A's scores next to a neighbour with 40 tokens out equal A's scores alone (upstream: A's padded
    history 'repeated' its n-gram and every position was forced to a stop word; the padding was penalised)."""
    gen, block = _gen(), 4
    logits = torch.randn(2 * block, V, generator=gen)
    own_ids = torch.randint(0, 200, (own, ), generator=gen).tolist()
    for config in (dict(repetition_ngram_size=3, repetition_ngram_threshold=3), dict(repetition_penalty=1.3),
                   dict(repetition_ngram_size=3, repetition_ngram_threshold=2, repetition_penalty=0.7)):
        a = _seq(0, own_ids, **config)
        alone = _scores([a], block, logits)
        beside = _scores([a, _neighbour(gen, 40)], block, logits)[:block]
        if 'repetition_penalty' in config and 'repetition_ngram_size' in config and own:
            # both on one row: its padding is the mask token (no false n-gram match), which the penalty then
            # touches: the one column that may differ, a token no output holds
            alone[:, MASK], beside[:, MASK] = 0, 0
        assert torch.equal(alone, beside), (config, own)
        assert torch.isfinite(beside).any(dim=1).all()


def test_the_ngram_filter_still_ends_a_request_that_repeats_itself():
    gen, block = _gen(), 4
    logits = torch.randn(2 * block, V, generator=gen)
    looping = _seq(0, [7, 8, 9] * 4, repetition_ngram_size=3, repetition_ngram_threshold=3)
    for batch in ([looping], [looping, _neighbour(gen, 40)]):
        scores = _scores(batch, block, logits)[:block]
        # every position is forced to the request's first stop word
        assert (scores.argmax(dim=1) == EOS).all() and torch.isinf(scores[:, :EOS]).all()


def test_the_penalty_still_acts_on_the_requests_own_tokens():
    gen, block = _gen(), 4
    logits = torch.randn(block, V, generator=gen).abs() + 1  # positive: a penalty 2 halves them
    scores = _scores([_seq(0, [5, 6], repetition_penalty=2.0)], block, logits)
    assert torch.allclose(scores[:, [5, 6]], logits[:, [5, 6]] / 2)
    others = torch.ones(V, dtype=torch.bool)
    others[[5, 6]] = False
    assert torch.equal(scores[:, others], logits[:, others])


def _stop_banned(seq, block):
    scores = _scores([seq], block, torch.zeros(block, V))
    return torch.isinf(scores[:, EOS]).tolist()


@pytest.mark.parametrize('block', [4, 32])
def test_min_new_tokens_bans_stop_words_only_where_fewer_tokens_come_before(block):
    gen = _gen()
    prompt = int(torch.randint(1, 3 * block, (1, ), generator=gen))
    first = prompt % block  # the first output slot of the first block
    for min_new in (1, 3, block + 2):
        banned = _stop_banned(_seq(0, [], prompt=prompt, min_new_tokens=min_new, max_new_tokens=4 * block), block)
        outputs = [p for p in range(first, block) if banned[p]]  # prompt slots are never sampled
        assert outputs == list(range(first, min(block, first + min_new))), (prompt, min_new)
    # a later block: `done` tokens already out
    done = block - first
    banned = _stop_banned(_seq(0, [1] * done, prompt=prompt, min_new_tokens=done + 2, max_new_tokens=4 * block),
                          block)
    assert banned == [True, True] + [False] * (block - 2)
    # ignore_eos: stop words are bad words at every position, as upstream
    banned = _stop_banned(_seq(0, [], prompt=prompt, min_new_tokens=1, ignore_eos=True, max_new_tokens=4 * block),
                          block)
    assert all(banned[first:])


def test_the_per_position_counter_stays_exact_across_a_completed_block():
    """Upstream's device step subtracts L from every position when a block completes; the host's inputs for the
    next block agree with that."""
    block, prompt, min_new = 8, 13, 9
    seq = _seq(0, [], prompt=prompt, min_new_tokens=min_new, max_new_tokens=64)
    inputs = FixedDLLMSamplingStrategy(PAD, block).make_sampling_inputs([seq])
    agent = DLLMModelAgentStrategy(dllm_config=DLLMConfig(block_length=block), dllm_mask_token=0)
    done = SimpleNamespace(dllm_mask=torch.full((block, ), consts.DLLM_UNMASKED, dtype=torch.uint8))
    stepped = agent.step_sampling_inputs(inputs, None, done).num_ignore_eos
    after = _seq(0, [1] * (block - prompt % block), prompt=prompt, min_new_tokens=min_new, max_new_tokens=64)
    host = FixedDLLMSamplingStrategy(PAD, block).make_sampling_inputs([after]).num_ignore_eos
    assert torch.equal(stepped, host)
    assert (host > 0).tolist() == [True, True, True, True, True, True, False, False]


def test_a_ban_of_token_0_survives_min_new_tokens():
    """Taking the stop words back out of the bad words must not unban the row's own bad ids: upstream's bad-word
    filter writes token 0's old score back for every masked-off entry, so masking them off undid a ban of token 0
    (found by a review of the first version)."""
    gen, block = _gen(), 8
    logits = torch.randn(block, V, generator=gen)
    logits[:, 0] = 50.0  # the model's favourite
    for stops in ([EOS], [EOS, 7, 9]):
        seq = _seq(0, [], prompt=11, bad_token_ids=[0], stop_token_ids=stops, min_new_tokens=2, max_new_tokens=64)
        scores = _scores([seq], block, logits)
        assert torch.isinf(scores[:, 0]).all() and (scores.argmax(dim=1) != 0).all()
        first = 11 % block
        assert torch.isinf(scores[:, EOS]).tolist()[first:] == [True, True] + [False] * (block - first - 2)
