"""No request's output depends on its neighbours: requests joining, leaving, aborting and reordered mid-block
through upstream's step-input lifecycle (``lmdeploy_focus_dev.testing.batch_lifecycle``), each request's committed
blocks equal to the same request decoded alone. Also checked on every step: the unmasking guard (logits only for
the batch's MASKED slots, nothing decoded without them) and the carried row bound (no front rerun)."""
import logging
import random
import secrets

import pytest
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy_focus_dev.testing.batch_lifecycle import Request, decode_alone, decode_batched
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference

L = 8


@pytest.mark.parametrize('strategy, commit, padded, alpha', [
    ('low_confidence_dynamic', 'exact', True, 1.5),
    ('low_confidence_static', 'exact', True, 1.0),
    ('sequential', 'fast', True, 1.0),
    ('low_confidence_dynamic', 'fast', False, None),  # delayed cache alone, eager
])
def test_every_request_decodes_as_it_would_alone(strategy, commit, padded, alpha, focus_logs):
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=L // 2, confidence_threshold=0.3)
    options = {'enable_delayed_cache': True, 'delayed_cache_commit': commit}
    if alpha is not None:
        options.update(enable_focus=True, focus_alpha=alpha)
    tiny, _ = tiny_model_and_reference('sdar', L, num_layers=3, hf_overrides={'dllm_focus': options},
                                       dllm_config=unmasking)
    vocab = tiny.model_config.dllm_mask_token
    requests = [Request(i, [rng.randrange(vocab) for _ in range(rng.randint(2, 20))], rng.randint(1, 4))
                for i in range(8)]
    aborting = {r.rid for r in requests if r.rid % 4 == 3}
    batched, sim = decode_batched(tiny, unmasking, padded, requests, rng, aborting)
    assert not any('front reran' in m for m in focus_logs.messages(logging.WARNING)), f'seed {seed}: short row bound'
    assert sim.decoded_checked > 0
    for request in requests:
        got = batched[request.rid]
        if request.rid not in aborting:
            assert len(got) == request.blocks, f'seed {seed}: request {request.rid} did not finish'
        alone = decode_alone(tiny, unmasking, padded, request)
        assert got == alone[:len(got)], f'seed {seed}: request {request.rid} decoded differently in the batch'
