"""No request's output depends on its neighbours: requests joining, leaving, aborting and reordered mid-block
through upstream's step-input lifecycle (``lmdeploy_focus_dev.testing.batch_lifecycle``), each request's committed
blocks equal to the same request decoded alone. Also checked on every step: the unmasking guard (logits only for
the batch's MASKED slots, nothing decoded without them) and the carried row bound (no front rerun)."""
import logging
import random
import secrets

import pytest
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy_focus_dev.testing.batch_lifecycle import Request, decode_alone, decode_batched, lifecycle_model
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference

L = 8


# sync_free: the most B*L rows a step runs without reading its counts (StepGraphs.sync_free_rows). 0: every step reads;
# 2L / 3L: a request alone never reads, batches of 3+ (4+) do, so a request's steps switch mode as neighbours come and go
@pytest.mark.parametrize('strategy, commit, padded, alpha, sync_free', [
    ('low_confidence_dynamic', 'exact', True, 1.5, 0),
    ('low_confidence_dynamic', 'exact', True, 1.5, 2 * L),
    ('low_confidence_static', 'exact', True, 1.0, 0),
    ('low_confidence_static', 'exact', True, 1.5, 3 * L),  # B = 3 shares bucket 4 with B = 4, which reads
    ('sequential', 'fast', True, 1.0, 0),
    ('low_confidence_dynamic', 'fast', False, None, 0),  # delayed cache alone, eager
    ('low_confidence_static', 'exact', False, None, 2 * L),
])
def test_every_request_decodes_as_it_would_alone(strategy, commit, padded, alpha, sync_free, focus_logs):
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    tiny, unmasking = lifecycle_model(L, strategy, alpha, commit)
    tiny.model.step_graphs.sync_free_rows = sync_free
    vocab = tiny.model_config.dllm_mask_token
    requests = [Request(i, [rng.randrange(vocab) for _ in range(rng.randint(2, 20))], rng.randint(1, 4))
                for i in range(8)]
    aborting = {r.rid for r in requests if r.rid % 4 == 3}
    batched, sim = decode_batched(tiny, unmasking, padded, requests, rng, aborting)
    assert not any('front reran' in m for m in focus_logs.messages(logging.WARNING)), f'seed {seed}: short row bound'
    assert sim.decoded_checked > 0
    # each step took the mode its batch size asks for (decode_alone's B = 1 steps all run sync-free where it is on)
    assert sim.modes == {(b, b * L <= sync_free) for b, _ in sim.modes}, f'seed {seed}: {sim.modes}'
    assert (sim.inputs.focus_state is None) == (alpha is None)  # delayed cache alone keeps no FOCUS state
    for request in requests:
        got = batched[request.rid]
        if request.rid not in aborting:
            assert len(got) == request.blocks, f'seed {seed}: request {request.rid} did not finish'
        alone = decode_alone(tiny, unmasking, padded, request)
        assert got == alone[:len(got)], f'seed {seed}: request {request.rid} decoded differently in the batch'


def test_a_delta_that_keeps_the_batch_moves_no_state(monkeypatch):
    """Upstream sends a reindex delta every decode step; one that keeps every sequence in place (read from its host
    copy of the indices) leaves the per-sequence state as it is, one that reorders or drops sequences moves it."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
    from lmdeploy_focus.models.step_state.focus_state import FocusState
    from lmdeploy_focus.strategies.dllm.delayed_cache_step_inputs import DelayedCacheStepInputs
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMStepInputs
    monkeypatch.setattr(FixedDLLMStepInputs, 'reindex', lambda self, delta: None)  # upstream's own fields
    B = random.randint(3, 9)
    inputs = DelayedCacheStepInputs(_block_size=L, _dllm_mask_token=0)
    inputs.delayed_state = DelayedCacheState(uncached=torch.rand(B, L) < 0.5, needs_warmup=torch.rand(B) < 0.5)
    inputs.focus_state = FocusState(progress=torch.randint(-1, L, (B, )), decoded_sum=torch.rand(B),
                                    decoded_steps=torch.rand(B))
    inputs.shadow_countdown = torch.randint(0, 16, (B, ))
    kept = (inputs.delayed_state, inputs.focus_state, inputs.shadow_countdown)

    def delta(index):
        return SimpleNamespace(indices=torch.tensor(index, dtype=torch.long), indice_cpu=np.array(index))

    inputs.reindex(delta(list(range(B))))
    assert all(a is b for a, b in zip((inputs.delayed_state, inputs.focus_state, inputs.shadow_countdown), kept))
    order = list(range(B))
    while order == sorted(order):
        random.shuffle(order)
    inputs.reindex(delta(order))
    assert torch.equal(inputs.delayed_state.uncached, kept[0].uncached[order])
    assert torch.equal(inputs.focus_state.decoded_sum, kept[1].decoded_sum[order])
    assert torch.equal(inputs.shadow_countdown, kept[2][order])
    inputs.reindex(delta(list(range(B - 1))))  # the last one leaves: a prefix, not the whole batch
    assert inputs.delayed_state.batch_size == B - 1 and inputs.focus_state.progress.numel() == B - 1


@pytest.mark.parametrize('padded', [True, False])
def test_alpha_auto_shadow_schedule_follows_each_request_through_joins_aborts_and_reorders(padded, monkeypatch):
    """--dllm-focus-alpha auto (whose tokens depend on the neighbours by design: one controller for the batch): each
    request's shadow countdown starts at its join index and ticks once a decode step it takes part in, whatever
    joins, leaves or reorders around it (the harness also checks every state tensor's size after each step)."""
    from lmdeploy_focus_dev.testing import batch_lifecycle
    from lmdeploy_focus.models.step_state import shadow_schedule
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    period = 3
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC,
                           denoising_steps=L // 2, confidence_threshold=0.3)
    options = {'enable_delayed_cache': True, 'enable_focus': True, 'focus_alpha': 'auto',
               'focus_auto_shadow_every': period}
    tiny, _ = tiny_model_and_reference('sdar', L, num_layers=3, hf_overrides={'dllm_focus': options},
                                       dllm_config=unmasking)
    tiny.model.step_graphs.sync_free_rows = 0
    vocab = tiny.model_config.dllm_mask_token
    requests = [Request(i, [rng.randrange(vocab) for _ in range(rng.randint(2, 20))], rng.randint(1, 3))
                for i in range(7)]
    steps_taken = {}  # request id -> decode steps it took part in
    decode = batch_lifecycle.LifecycleSim.decode

    def counted_decode(self, abort=(), shuffle=None):
        decode(self, abort, shuffle)
        for rid in self.batch:
            steps_taken[rid] = steps_taken.get(rid, 0) + 1
        inputs = self.inputs
        assert inputs.shadow_period == period, 'the harness did not set up the shadow schedule'
        expected = []
        for rid in self.batch:  # an independent model: the countdown after that many ticks from its join phase
            countdown = shadow_schedule.fresh(1, period, inputs.shadow_seed, self.joined[rid])
            for _ in range(steps_taken[rid]):
                countdown = shadow_schedule.tick(countdown, period)[1]
            expected.append(int(countdown))
        assert inputs.shadow_countdown.tolist() == expected, f'seed {seed}'

    monkeypatch.setattr(batch_lifecycle.LifecycleSim, 'decode', counted_decode)
    aborting = {r.rid for r in requests if r.rid % 3 == 2}
    _, sim = decode_batched(tiny, unmasking, padded, requests, rng, aborting)
    assert sum(steps_taken.values()) > 0 and sim.decoded_checked > 0
    assert tiny.model.delayed_cache_runtime.alpha_state is not None  # the controller ran
