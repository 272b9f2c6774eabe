"""The delayed-cache SDAR model path on CPU (ragged rows, sparse KV fill, ragged attention through
the torch reference), checked against upstream's dense decode step of the same model."""
import secrets
from types import SimpleNamespace

import pytest
import torch

from lmdeploy.pytorch import consts
from lmdeploy_focus.models.sdar import DelayedCacheSDARForCausalLM
from lmdeploy_focus.models.step_graphs import SYNC_FREE_ROWS_ENV
from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
from lmdeploy_focus.models.step_state.focus_state import FocusState
from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

L = 8


@pytest.fixture(autouse=True)
def reading_step(monkeypatch):
    """These tests check the step that reads its row counts (LM head on the rows needing logits); at their batch
    sizes the default would step sync-free (every slot through the head, test_runtime_counts_sync_free_rows)."""
    monkeypatch.setenv(SYNC_FREE_ROWS_ENV, '0')


def attach_step_inputs(runtime, uncached, input_mask, history):
    """The pieces of DelayedCacheStepInputs the model reads at forward time."""
    runtime.step_inputs = step_inputs_stub(
        delayed_state=DelayedCacheState(uncached=uncached, needs_warmup=torch.zeros(uncached.size(0), dtype=torch.bool)),
        focus_state=FocusState.fresh(uncached.size(0)), next_rows_bound=None,
        extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
        model_inputs=SimpleNamespace(history_lengths=torch.tensor(history)))


@pytest.mark.parametrize('commit_mode', ['exact', 'fast'])
def test_ragged_step_matches_the_dense_step_when_stale_kv_is_current(commit_mode):
    sdar = build_tiny_sdar(block_length=L,
                           hf_overrides={'dllm_focus': {'enable_delayed_cache': True,
                                                        'delayed_cache_commit': commit_mode}})
    model = sdar.model
    assert isinstance(model, DelayedCacheSDARForCausalLM)
    runtime = model.delayed_cache_runtime
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    runner = sdar.new_runner(page_size=16)
    prompts = [torch.randint(0, 400, (n, ), generator=gen).tolist() for n in (3, 8, 13)]
    runner.prefill(prompts)
    B = runner.batch_size

    # A block with some decoded tokens; the rest still masked.
    blocks = runner.current_blocks()
    decoded = torch.rand(B, L, generator=gen) < 0.4
    blocks = torch.where(decoded, torch.randint(0, 400, (B, L), generator=gen), blocks)
    input_mask = torch.where(blocks == sdar.model_config.dllm_mask_token, consts.DLLM_MASKED, consts.DLLM_UNMASKED)
    input_mask[:, -1] = consts.DLLM_MASKED  # keeps the step from being a commit step

    # Step A, upstream's dense path (no step inputs attached): KV of every position from these ids.
    runtime.step_inputs = None
    dense_logits = runner.decode_step(blocks)

    # Step B, the ragged path with the same ids: the processed rows (all masked ones, which include
    # the last position, plus random others) read KV that step A made current.
    uncached = (input_mask == consts.DLLM_MASKED) | (torch.rand(B, L, generator=gen) < 0.3)
    attach_step_inputs(runtime, uncached, input_mask, runner.history_lengths)
    ragged_logits = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
    step = runtime.step
    # every processed row goes through the layers; get_logits runs the LM head on those still masked
    # (the only logits the unmasker reads) and hands the sampler those rows only, in slot order here
    needs_logits = uncached & (input_mask == consts.DLLM_MASKED)
    rows = needs_logits.flatten().nonzero().flatten()
    assert step is not None and step.num_rows == int(uncached.sum()) and ragged_logits.size(0) == rows.numel()
    assert step.num_logit_rows == int(needs_logits.sum())
    assert torch.equal(runtime.logit_slots, rows)
    assert torch.equal(step.fresh, uncached)
    torch.testing.assert_close(ragged_logits, dense_logits.reshape(B * L, -1)[rows], rtol=1e-4, atol=1e-4)
    # kv read length = history + rightmost processed + 1 = the whole block here
    assert step.rows.kv_seqlens[:B].tolist() == [h + L for h in runner.history_lengths]
    runtime.end_step()
    assert runtime.logit_slots is None


def test_ragged_step_reads_every_key_of_the_block_and_writes_only_the_processed_positions():
    """Every query sees the whole block (stock decoding's view; the reference fork stopped at the rightmost
    processed position and hid the decoded tokens right of it, spec §10); only processed positions are written."""
    sdar = build_tiny_sdar(block_length=L, hf_overrides={'dllm_focus': {'enable_delayed_cache': True}})
    runtime = sdar.model.delayed_cache_runtime
    runner = sdar.new_runner(page_size=16)
    runner.prefill([[5, 6, 7], [9] * 10])
    B = runner.batch_size
    blocks = runner.current_blocks()
    input_mask = torch.full((B, L), consts.DLLM_MASKED)
    uncached = torch.zeros(B, L, dtype=torch.bool)
    uncached[0, :3] = True  # rightmost 2
    uncached[1, :6] = True  # rightmost 5
    page_size = runner.kv_cache.page_size
    table = runner.kv_cache.allocator.page_table([0, 1])

    def step_with(fill):
        """The step's logits with the unprocessed block positions' K/V set to ``fill`` (finite values)."""
        for b, written in ((0, 3), (1, 6)):
            for pos in range(runner.history_lengths[b] + written, runner.history_lengths[b] + L):
                for k_cache, v_cache in runner.kv_cache.caches:
                    k_cache[table[b, pos // page_size], pos % page_size] = fill
                    v_cache[table[b, pos // page_size], pos % page_size] = fill
        attach_step_inputs(runtime, uncached, input_mask, runner.history_lengths)
        logits = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        assert runtime.step.num_rows == 9 and logits.shape[0] == runtime.step.num_logit_rows
        assert runtime.step.rows.kv_seqlens[:B].tolist() == [h + L for h in runner.history_lengths]
        for b, written in ((0, 3), (1, 6)):  # not written: still the fill
            k, v = runner.kv_cache.read(0, b, runner.history_lengths[b] + L)
            assert (k[runner.history_lengths[b] + written:] == fill).all()
        runtime.end_step()
        return logits

    first, second = step_with(0.5), step_with(-0.5)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    assert not torch.allclose(first, second)  # the keys right of the processed positions are read


def test_stock_decoding_is_unchanged_without_delayed_cache():
    """Without the delayed cache the plugin's SDAR class is upstream's model: same prefill and decode logits on
    the same weights, and the same KV."""
    from lmdeploy.pytorch.models.sdar import SDARForCausalLM
    seed = secrets.randbits(31)
    ours, theirs = build_tiny_sdar(block_length=L, seed=seed), build_tiny_sdar(block_length=L, seed=seed,
                                                                               model_cls=SDARForCausalLM)
    assert isinstance(ours.model, DelayedCacheSDARForCausalLM) and ours.model.delayed_cache_runtime is None
    assert type(theirs.model) is SDARForCausalLM
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 400, (n, ), generator=gen).tolist() for n in (3, 11)]
    runners = [model.new_runner(page_size=16) for model in (ours, theirs)]
    prefill = [runner.prefill(prompts) for runner in runners]
    torch.testing.assert_close(prefill[0], prefill[1], rtol=0, atol=0, msg=lambda m: f'prefill, seed {seed}: {m}')
    blocks = runners[0].current_blocks()
    blocks[:, :3] = torch.randint(0, 400, (blocks.size(0), 3), generator=gen)  # some decoded tokens
    decode = [runner.decode_step(blocks) for runner in runners]
    torch.testing.assert_close(decode[0], decode[1], rtol=0, atol=0, msg=lambda m: f'decode, seed {seed}: {m}')
    assert decode[0].shape == (2, L, ours.model_config.vocab_size)
    for b in range(2):
        length = runners[0].history_lengths[b] + L
        for layer in (0, 1):
            for x, y in zip(runners[0].kv_cache.read(layer, b, length), runners[1].kv_cache.read(layer, b, length)):
                assert torch.equal(x, y), f'KV of layer {layer}, sequence {b}, seed {seed}'


def _counted_step(padded: bool):
    """One delayed-cache step of two sequences (the first with two cached slots) through the model; its logits,
    the step and the runtime (the step ended: counted)."""
    sdar = build_tiny_sdar(block_length=L, hf_overrides={'dllm_focus': {'enable_delayed_cache': True}})
    runtime = sdar.model.delayed_cache_runtime
    runner = sdar.new_runner(page_size=16)
    if padded:
        runner.capture_step_graphs([4])  # B = 2 runs in bucket 4: row buckets of 16 up to 4L = 32
    runner.prefill([[1, 2, 3], [4, 5]])
    blocks = runner.current_blocks()
    uncached = torch.zeros(2, L, dtype=torch.bool)
    uncached[0, 2:] = True
    uncached[1, :] = True
    attach_step_inputs(runtime, uncached, torch.full((2, L), consts.DLLM_MASKED), runner.history_lengths)
    logits = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
    step = runtime.step
    runtime.end_step()  # counted when the step ends
    return logits, step, runtime, uncached


def test_runtime_counts_processed_rows():
    _, step, runtime, _ = _counted_step(padded=False)
    assert not step.sync_free
    assert (runtime.steps, runtime.deep_rows, runtime.logit_rows, runtime.dense_rows) == (1, L - 2 + L, L - 2 + L, 2 * L)


@pytest.mark.parametrize('padded', [False, True])
def test_runtime_counts_sync_free_rows(monkeypatch, padded):
    """A small batch's step reads no counts: the work counters take the rows it ran (every one of the batch's
    B*L slots through the LM head, the deep layers on the row bucket holding them), not the rows FOCUS kept."""
    monkeypatch.setenv(SYNC_FREE_ROWS_ENV, str(4 * L))
    logits, step, runtime, uncached = _counted_step(padded)
    assert step.sync_free and runtime.step_inputs.next_rows_bound is None
    by_slot = logits.view(2, L, -1)
    assert logits.size(-2) == 2 * L and not by_slot[~uncached].any()  # cached slots: no fresh logits, zero rows
    assert (by_slot[uncached].abs().sum(-1) > 0).all()
    assert (runtime.steps, runtime.deep_rows, runtime.logit_rows, runtime.dense_rows) == (1, 2 * L, 2 * L, 2 * L)
    runtime.end_step()
