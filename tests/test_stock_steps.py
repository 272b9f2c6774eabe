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
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs, DLLMModelAgentStrategy

from lmdeploy_focus.config.options import FocusOptions
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
from lmdeploy_focus_dev.testing.batch_lifecycle import (LifecycleSim, Request, decode_alone, decode_batched,
                                                        lifecycle_model)
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

L = 8


def _runtime(rows: int, block: int, graph_batches=(), serving: bool = True) -> DelayedCacheRuntime:
    runtime = DelayedCacheRuntime(block_length=block, stock_step_rows=rows, graph_batches=set(graph_batches))
    runtime.step_inputs = step_inputs_stub(delayed_state=DelayedCacheState.fresh(1, block) if serving else None)
    return runtime


def _stock(runtime, most=40):
    return [b for b in range(1, most) if runtime.stock_batch(b)]


@pytest.mark.parametrize('rows, block, most', [(0, 32, 0), (31, 32, 0), (32, 32, 1), (64, 32, 2), (96, 32, 3),
                                               (128, 16, 8), (64, 64, 1)])
def test_without_graphs_a_batch_is_stock_when_its_block_rows_fit(rows, block, most):
    assert _stock(_runtime(rows, block)) == list(range(1, most + 1))


# upstream's capture sizes: the default powers of two, and custom lists (--cudagraph-capture-batch-sizes)
@pytest.mark.parametrize('rows, block, sizes, most', [
    (64, 32, [1, 2, 4, 8, 16], 2), (96, 32, [1, 2, 4, 8], 2), (128, 16, [1, 2, 4, 8, 16], 8),
    (64, 32, [1, 4, 8], 1), (64, 32, [3, 8], 0), (64, 16, [2, 6], 2), (96, 32, [1, 2, 3], 3), (0, 32, [1, 2], 0)])
def test_under_graphs_every_batch_of_a_capture_size_takes_the_kind_of_step_warmed_for_it(rows, block, sizes, most):
    warming = _runtime(rows, block, serving=False)
    for size in sizes:  # upstream's warm-up asks for each capture size; stock ones get upstream's graph
        warming.note_graph_batch(size)
    stock_sizes = {size for size in sizes if warming.stock_batch(size)}
    assert warming.graph_batches == set(sizes)
    serving = _runtime(rows, block, graph_batches=warming.graph_batches)
    assert _stock(serving) == list(range(1, most + 1))
    for batch in range(1, max(sizes) + 1):  # upstream replays the smallest capture size holding the batch
        bucket = min(size for size in sizes if size >= batch)
        assert serving.stock_batch(batch) == (bucket in stock_sizes), (batch, bucket)
    serving.note_graph_batch(max(sizes) + 1)  # in serving the sizes are upstream's, already noted
    assert serving.graph_batches == set(sizes)


@pytest.mark.parametrize('value', [-1, 1.5, True, '128', (1 << 20) + 1])
def test_a_bad_stock_step_rows_is_refused_by_name(value):
    with pytest.raises(ValueError, match='dllm_stock_step_rows'):
        FocusOptions(stock_step_rows=value)


def _tiny(strategy: str, alpha):
    return lifecycle_model(L, strategy, alpha)


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


@pytest.mark.parametrize('max_batches, rows, warned', [(2, 64, True), (4, 64, False), (2, 0, False), (1, 32, True)])
def test_an_engine_whose_every_batch_runs_stock_steps_says_so(focus_logs, max_batches, rows, warned):
    import logging
    from lmdeploy.pytorch.config import CacheConfig, SchedulerConfig
    from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar
    tiny = build_tiny_sdar(block_length=32, hf_overrides={'dllm_focus': {'enable_focus': True, 'stock_step_rows': rows}})
    factory = tiny.model.ctx_mgr.build_ctx.strategy_factory
    cache = CacheConfig(max_batches=max_batches, block_size=64, num_cpu_blocks=0, num_gpu_blocks=16, device_type='cpu')
    factory.build_engine_strategy(cache, SchedulerConfig(max_batches=max_batches, max_session_len=1024))
    said = [m for m in focus_logs.messages(logging.WARNING) if 'run as stock steps' in m]
    assert bool(said) == warned, said
