"""Every model family on the engine path (our model classes on upstream modules, CPU harness)
against its plain-torch reference: the recorded greedy steps of the reference decode loop give the
same logits at prefill and at every decode step.

SDAR runs the engine in fp32 (reference fp64); the MoE families run it in fp64 so that routing,
a discrete choice, rarely sits within rounding of a flip (see testing/llada2_cpu.py). Routers are
fp32 on both sides, so prompts the reference routes on a near tie are redrawn
(``prompts_clear_of_ties``): CI once drew a group choice decided by one fp32 ulp.
"""
import pytest
import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy

from lmdeploy_focus.models.llada2 import DelayedCacheLLaDA2MoeModelLM
from lmdeploy_focus.models.sdar import DelayedCacheSDARForCausalLM, DelayedCacheSDARMoeForCausalLM
from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
from lmdeploy_focus_dev.testing.families import FAMILIES, prompts_clear_of_ties, tiny_model_and_reference

CACHED = consts.DLLM_CACHED
L = 4
REGISTERED = {'sdar': DelayedCacheSDARForCausalLM, 'sdar_moe': DelayedCacheSDARMoeForCausalLM,
              'llada2': DelayedCacheLLaDA2MoeModelLM}


def assert_engine_replays_reference_decoding(tiny, reference):
    # fp64 engines: attention (both sides) and upstream's RoPE angles are fp32, hence not 1e-12
    tol = dict(atol=1e-5, rtol=1e-5) if tiny.model_config.dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    mask_id = tiny.model_config.dllm_mask_token
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC,
                           denoising_steps=L, confidence_threshold=0.3)
    seed, prompts, results = prompts_clear_of_ties(
        reference, (3, 8, 6), mask_id,
        lambda prompts: reference_generate(reference, prompts, L, mask_id, unmasking, max_new_tokens=2 * L + 1,
                                           record_steps=True))
    where = f'weights seed {tiny.seed}, prompts seed {seed}'  # reproduces a failure
    for b, (prompt, result) in enumerate(zip(prompts, results)):
        runner = tiny.new_runner(page_size=8)
        prefill = runner.prefill([prompt])[0]
        if len(prompt) % L:  # a prompt ending mid-block: its prefill logits are the first step's
            torch.testing.assert_close(prefill, result.steps[0].logits.float(), **tol,
                                       msg=lambda m: f'{where} seq {b}: {m}')
        decode = [s for s in result.steps if s.kind == 'decode']
        assert len(decode) >= L
        for i, step in enumerate(decode):
            assert runner.history_lengths == [step.history_length]
            logits = runner.decode_step(step.input_ids[None])[0]
            torch.testing.assert_close(logits, step.logits.float(), **tol,
                                       msg=lambda m: f'{where} seq {b} step {i}: {m}')
            if (step.next_mask == CACHED).all():
                runner.commit_blocks()


@pytest.mark.parametrize('family', FAMILIES)
def test_engine_matches_the_reference_prefill_and_decode(family):
    tiny, reference = tiny_model_and_reference(family, L)
    assert type(tiny.model) is REGISTERED[family]  # what CUSTOM_MODULE_MAP builds for the architecture
    assert_engine_replays_reference_decoding(tiny, reference)
