"""Stock steps at small batches (``--dllm-stock-step-rows``): a decode batch of at most that many block rows runs
upstream's stock step, and the next delayed-cache step starts every sequence afresh (its whole block processed).

Checked through the batch lifecycle harness (``lmdeploy_focus_dev.testing.batch_lifecycle``): each step takes the kind
its batch size asks for, a request's committed blocks equal the same request decoded alone with the same kind of step
at each step, a stock step's unmasking is upstream's, and the first delayed-cache step after stock steps processes
every block row.
"""
import random
import secrets

import pytest
import torch
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs, DLLMModelAgentStrategy

from lmdeploy_focus.config.options import FocusOptions
from lmdeploy_focus.strategies.dllm.delayed_cache_step_inputs import DelayedCacheStepInputs, stock_batch_limit
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus_dev.testing.batch_lifecycle import LifecycleSim, Request, decode_alone, decode_batched
from lmdeploy_focus_dev.testing.families import tiny_model_and_reference

L = 8


@pytest.mark.parametrize('rows, block, most', [(0, 32, 0), (31, 32, 0), (32, 32, 1), (127, 32, 2), (128, 32, 4),
                                               (255, 32, 4), (256, 32, 8), (128, 16, 8), (128, 64, 2), (96, 32, 2)])
def test_the_stock_batch_is_the_largest_power_of_two_whose_rows_fit(rows, block, most):
    assert stock_batch_limit(rows, block) == most
    inputs = DelayedCacheStepInputs(_block_size=block, _dllm_mask_token=0)
    inputs.stock_step_rows = rows
    # every batch up to the limit, none above: all batches of one upstream graph bucket (powers of two) agree
    assert [b for b in range(1, 20) if inputs.stock_step(b)] == list(range(1, most + 1))


@pytest.mark.parametrize('value', [-1, 1.5, True, '128', (1 << 20) + 1])
def test_a_bad_stock_step_rows_is_refused_by_name(value):
    with pytest.raises(ValueError, match='dllm_stock_step_rows'):
        FocusOptions(stock_step_rows=value)


def _tiny(strategy: str, alpha, commit: str = 'exact'):
    unmasking = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=L // 2, confidence_threshold=0.3)
    options = {'enable_delayed_cache': True, 'delayed_cache_commit': commit}
    if alpha is not None:
        options.update(enable_focus=True, focus_alpha=alpha)
    tiny, _ = tiny_model_and_reference('sdar', L, num_layers=3, hf_overrides={'dllm_focus': options},
                                       dllm_config=unmasking)
    return tiny, unmasking


def _requests(rng, vocab, count=8):
    return [Request(i, [rng.randrange(vocab) for _ in range(rng.randint(2, 20))], rng.randint(1, 4))
            for i in range(count)]


def _shared_engine(tiny, unmasking, padded, requests, rng, stock_step_rows):
    """Requests sharing one engine: a request alone (stock steps), two join (delayed-cache steps), one of them is
    aborted (stock again), another joins (delayed-cache again); then the rest join at random, some abort."""
    r = requests
    sim = LifecycleSim(tiny, unmasking, padded, stock_step_rows=stock_step_rows)
    sim.prefill([r[0]])
    for _ in range(2):
        sim.decode()
    sim.prefill([r[1], r[2]])
    for _ in range(2):
        sim.decode()
    sim.decode(abort=(r[1].rid, ))
    sim.decode()
    sim.prefill([r[3]])
    for _ in range(2):
        sim.decode()
    queue, aborting = list(r[4:]), {r[1].rid} | {x.rid for x in r[4:] if x.rid % 4 == 3}
    for _ in range(2000):
        if not queue and not sim.live():
            break
        if queue and (rng.random() < 0.25 or not sim.live()):
            sim.prefill([queue.pop(0) for _ in range(rng.randint(1, min(3, len(queue))))])
            continue
        abort = tuple(x for x in sim.live() if x in aborting and x != r[1].rid and rng.random() < 0.15)
        sim.decode(abort=abort, shuffle=rng if rng.random() < 0.2 else None)
    return sim, aborting


@pytest.mark.parametrize('strategy, alpha, padded', [
    ('low_confidence_static', 1.5, True),
    ('low_confidence_dynamic', 1.5, False),
    ('low_confidence_dynamic', None, True),  # delayed cache alone
])
def test_steps_switch_kind_with_the_batch_and_no_request_depends_on_its_neighbours(strategy, alpha, padded):
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    tiny, unmasking = _tiny(strategy, alpha)
    tiny.model.step_graphs.sync_free_rows = 0
    requests = _requests(rng, tiny.model_config.dllm_mask_token, count=10)
    requests[:4] = [Request(r.rid, r.prompt, 4) for r in requests[:4]]  # still running through the scripted start
    # batches of 1-2 run stock steps, 3+ delayed-cache ones: requests switch as neighbours come and go
    sim, aborting = _shared_engine(tiny, unmasking, padded, requests, rng, stock_step_rows=2 * L + 3)
    assert sim.stock_batches and sim.stock_batches <= {1, 2}, f'seed {seed}: {sim.stock_batches}'
    assert sim.modes and all(b >= 3 for b, _ in sim.modes), f'seed {seed}: {sim.modes}'
    # a delayed-cache step after stock steps processes every block row of every sequence (a warm-up), whatever the
    # stock steps decoded or committed meanwhile
    assert len(sim.after_stock) >= 2, f'seed {seed}: {sim.after_stock}'
    assert all(rows == [L] * len(rows) for rows in sim.after_stock), f'seed {seed}: {sim.after_stock}'
    for request in requests:
        got, kinds = sim.outputs[request.rid], sim.kinds.get(request.rid, [])
        if request.rid not in aborting:
            assert len(got) == request.blocks, f'seed {seed}: request {request.rid} did not finish'
        alone = decode_alone(tiny, unmasking, padded, request, kinds=kinds)
        assert got == alone[:len(got)], f'seed {seed}: request {request.rid} ({kinds}) decoded differently'
    assert len(set(sim.kinds[requests[0].rid])) == 2


def test_a_stock_step_is_upstreams_step(monkeypatch):
    """Batches within the stock rows never enter the delayed-cache step: upstream's unmasking runs on upstream's
    logits (checked against upstream's own agent strategy on the same step), and each step is counted."""
    seed = secrets.randbits(31)
    rng = random.Random(seed)
    tiny, unmasking = _tiny('low_confidence_static', 1.5)
    upstream = DLLMModelAgentStrategy(dllm_config=unmasking, dllm_mask_token=tiny.model_config.dllm_mask_token)
    checked = []

    def compare(self, inputs, logits, next_token_ids, extra_inputs):
        want = upstream.post_sampling(inputs, logits, next_token_ids.clone(),
                                      DLLMExtraInputs(dllm_mask=extra_inputs.dllm_mask.clone()))
        got = plugin_post_sampling(self, inputs, logits, next_token_ids, extra_inputs)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1].dllm_mask, want[1].dllm_mask), f'seed {seed}'
        checked.append(getattr(inputs, 'is_decoding', False))
        return got

    plugin_post_sampling = DelayedCacheAgentStrategy.post_sampling
    monkeypatch.setattr(DelayedCacheAgentStrategy, 'post_sampling', compare)
    requests = _requests(rng, tiny.model_config.dllm_mask_token, count=5)
    outputs, sim = decode_batched(tiny, unmasking, False, requests, rng, set(), stock_step_rows=1 << 20)
    assert not sim.modes and sim.stock_batches, f'seed {seed}'
    assert all(len(outputs[r.rid]) == r.blocks for r in requests), f'seed {seed}'
    assert sum(checked) == sim.runtime.stock_steps > 0  # the prefills' unmasking was compared too


def test_a_stock_step_counts_every_block_row_and_what_it_decoded():
    from lmdeploy.pytorch import consts
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
    from lmdeploy_focus.strategies.dllm.run_stats import KEYS, RunStats
    M, U, C = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED
    runtime = DelayedCacheRuntime(block_length=4, stats=RunStats())
    before = torch.tensor([M, M, M, U, U, U, U, U])  # sequence 1's block is committed by this step
    after = torch.tensor([U, M, U, U, C, C, C, C])
    rows = runtime.after_stock_step(before, after)
    got = {key: rows[:, i].tolist() for i, key in enumerate(KEYS)}
    assert got['decode_steps'] == [1, 1] and got['stock_steps'] == [1, 1]
    assert got['generated_tokens'] == [2, 0]
    assert got['processed_tokens'] == [4, 4] and got['deep_tokens'] == [4, 4]
    assert got['candidates'] == [0, 0] and got['kept_candidates'] == [0, 0]
    assert runtime.stats.read()['stock_steps'] == 2 and runtime.stock_steps == 1
    assert DelayedCacheRuntime(block_length=4).after_stock_step(before, after) is None  # not tracking: host count only
