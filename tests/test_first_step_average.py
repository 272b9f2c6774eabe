"""FOCUS's decoded average at a block's first step follows the unmasker: static and sequential unmasking
decode ``L // denoising_steps`` tokens every step, so a block starts from that, not from the spec's 1.

Starting from 1 under a static unmasker keeps fewer masked tokens than it will decode (α 1.5: 2, then 3)
and the guarded unmasker can only decode the kept ones: every block takes extra steps, and at α 1.0 with
the leftmost policy it decodes one token a step for the whole block.
"""
import random
import secrets

import pytest
import torch

from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy_focus.models.step_state.focus_state import FocusState, decode_per_step, first_step_average
from lmdeploy_focus.models.step_state.focus_step import FocusConfig
from lmdeploy_focus_dev.reference import focus_spec
from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference
from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar

STRATEGIES = tuple(UnmaskingStrategy)


def test_engine_rule_agrees_with_the_oracle_on_random_settings():
    rng = random.Random(secrets.randbits(31))
    for _ in range(200):
        length = rng.choice([4, 8, 16, 32, 64])
        steps = rng.choice([None, 1, 2, 3, 5, 8, length, 2 * length])
        strategy = rng.choice(STRATEGIES)
        config = DLLMConfig(block_length=length, unmasking_strategy=strategy, denoising_steps=steps)
        want = focus_spec.first_step_average(strategy, steps, length)
        assert first_step_average(decode_per_step(config)) == want, (strategy, length, steps)


def test_upstream_static_and_sequential_unmaskers_take_at_most_decode_per_step_tokens_a_step():
    """The front's row bound (sparse_step.next_step_rows) counts a block whole only if it can complete this step,
    which under static / sequential unmasking needs no more masked slots than decode_per_step: upstream's
    unmasker on random scores and masks never unmasks more in one step."""
    from lmdeploy.pytorch import consts
    from lmdeploy.pytorch.strategies.dllm.unmasking import UnmaskingProcessor
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    for strategy in (UnmaskingStrategy.LOW_CONFIDENCE_STATIC, UnmaskingStrategy.SEQUENTIAL):
        for length, steps in ((8, 2), (8, 8), (16, 3), (32, 8), (32, None), (8, 64)):
            # upstream's unmasker divides by denoising_steps unguarded; the factory gives it the block length for None
            config = DLLMConfig(block_length=length, unmasking_strategy=strategy, denoising_steps=steps or length)
            blocks, vocab = 16, 11
            masked = torch.rand(blocks, length, generator=gen) < torch.rand(blocks, 1, generator=gen)
            mask = torch.where(masked, consts.DLLM_MASKED, consts.DLLM_UNMASKED).flatten()
            logits = torch.randn(blocks * length, vocab, generator=gen)
            out = UnmaskingProcessor(config)(logits, torch.randint(0, vocab, (blocks * length, ), generator=gen),
                                             logits.argmax(-1), mask.clone())
            out_mask = out[0] if isinstance(out, tuple) else out
            taken = ((mask == consts.DLLM_MASKED) & (out_mask != consts.DLLM_MASKED)).view(blocks, length).sum(1)
            cap = decode_per_step(DLLMConfig(block_length=length, unmasking_strategy=strategy, denoising_steps=steps))
            assert cap is not None and int(taken.max()) <= cap, (strategy, length, steps)
            if strategy == UnmaskingStrategy.LOW_CONFIDENCE_STATIC:  # exactly min(cap, masked) (sequential: its
                assert torch.equal(taken, masked.sum(1).clamp(max=cap))  # window wraps onto unmasked slots, fewer)
    assert decode_per_step(DLLMConfig(unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC)) is None


@pytest.mark.parametrize('strategy, steps, expected', [(UnmaskingStrategy.LOW_CONFIDENCE_STATIC, 8, 4.0),
                                                       (UnmaskingStrategy.SEQUENTIAL, 4, 8.0),
                                                       (UnmaskingStrategy.LOW_CONFIDENCE_STATIC, 64, 1.0),
                                                       (UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC, 8, 1.0)])
def test_strategy_factory_gives_the_runtime_the_unmaskers_rate(strategy, steps, expected):
    config = DLLMConfig(unmasking_strategy=strategy, denoising_steps=steps)
    tiny = build_tiny_sdar(block_length=32, dllm_config=config,
                           hf_overrides={'dllm_focus': {'enable_delayed_cache': True, 'enable_focus': True}})
    runtime = tiny.model.delayed_cache_runtime
    assert runtime.first_step_decoded == expected
    fixed = None if strategy == UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC else int(expected)
    assert runtime.decode_per_step == fixed and runtime.step_config().decode_per_step == fixed  # the row bound's cap
    state = FocusState.fresh(3)
    assert torch.equal(state.avg_decoded(runtime.first_step_decoded), torch.full((3, ), expected))


@pytest.mark.parametrize('strategy', ['low_confidence_static', 'sequential'])
def test_leftmost_at_alpha_one_decodes_the_unmaskers_count_every_step(strategy):
    """α 1.0, leftmost: the kept masked tokens are exactly the target, so the decoded count per step shows
    the target. With the average starting at 1 every step would decode a single token."""
    L, per_step = 8, 2
    tiny, reference = tiny_model_and_reference('sdar', L, num_layers=3)
    mask_id = tiny.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=L // per_step)
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    prompts = [torch.randint(0, mask_id, (n, ), generator=gen).tolist() for n in (3, 8, 13)]
    stock = reference_generate(reference, prompts, L, mask_id, unmasking, max_new_tokens=3 * L)
    focus = reference_generate(reference, prompts, L, mask_id, unmasking, max_new_tokens=3 * L, delayed_cache=True,
                               commit_mode='exact', focus=FocusConfig(1.0, 'leftmost', False))
    for plain, evicting in zip(stock, focus):
        # the same schedule as stock's: per_step tokens a step, fewer only where fewer are left in the block
        decoded = [d for d in evicting.decoded_per_step if d > 0]
        assert decoded == [d for d in plain.decoded_per_step if d > 0], (evicting.decoded_per_step,
                                                                        plain.decoded_per_step)
        assert decoded.count(per_step) >= 3 * L // per_step - 1
