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
from lmdeploy_focus.models.step_state.focus_state import FocusState, first_step_decoded
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
        assert first_step_decoded(config) == want, (strategy, length, steps)


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
