"""Bucket choice of the sparse decode step's graphs, and the capture-order guard."""
import random

import pytest
import torch

from lmdeploy_focus.models.step_graphs import (ROW_ALIGN, ROW_BUCKETS, ROW_BUCKETS_ENV, StepGraphs, pick, row_bucket_count,
                                               row_buckets)
from lmdeploy_focus.models.sparse_step import StepConfig
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub


@pytest.mark.parametrize('batch, length', [(1, 4), (1, 32), (3, 16), (16, 32), (24, 32), (64, 32), (256, 32),
                                           (256, 64), (512, 16)])
def test_row_buckets_cover_every_count_with_bounded_padding(batch, length):
    buckets = row_buckets(batch, length)
    total = batch * length
    assert buckets == sorted(set(buckets)) and buckets[-1] == total and len(buckets) <= ROW_BUCKETS + 1
    assert all(b % ROW_ALIGN == 0 for b in buckets[:-1])
    step = max(ROW_ALIGN, -(-(-(-total // ROW_BUCKETS)) // ROW_ALIGN) * ROW_ALIGN)
    for rows in range(1, total + 1):  # every possible kept count has a bucket, at most one step above it
        bucket = pick(buckets, rows)
        assert bucket is not None and rows <= bucket < rows + step


@pytest.mark.parametrize('count', [2, 7, 64])
def test_another_bucket_count_keeps_the_padding_bound(count):
    buckets, total = row_buckets(256, 32, count), 256 * 32
    step = -(-(-(-total // count)) // ROW_ALIGN) * ROW_ALIGN
    assert len(buckets) == -(-total // step) and buckets[-1] == total
    assert all(rows <= pick(buckets, rows) < rows + step for rows in random.sample(range(1, total + 1), 200))


def test_the_bucket_count_comes_from_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv(ROW_BUCKETS_ENV, raising=False)
    assert row_bucket_count() == ROW_BUCKETS
    monkeypatch.setenv(ROW_BUCKETS_ENV, '64')
    assert row_bucket_count() == 64
    graphs = StepGraphs(parts=None, config=StepConfig(block_length=4, commit_mode='exact'), attention_rows=None)
    assert graphs.row_bucket_count == 64
    for bad in ('1', '257', 'many', '-4'):
        monkeypatch.setenv(ROW_BUCKETS_ENV, bad)
        with pytest.raises(ValueError, match=ROW_BUCKETS_ENV):
            row_bucket_count()


def test_pick_is_the_smallest_fitting_bucket():
    sizes = sorted(random.sample(range(1, 300), 9))
    for n in range(1, 320):
        fitting = [s for s in sizes if s >= n]
        assert pick(sizes, n) == (min(fitting) if fitting else None)


def test_a_larger_batch_bucket_after_a_smaller_one_is_refused():
    """Shared buffers are sized by the first (largest) capture, as upstream warms up largest first."""
    graphs = StepGraphs(parts=None, config=StepConfig(block_length=4, commit_mode='exact'), attention_rows=None)
    graphs._block_offsets = torch.zeros(2, 8, dtype=torch.int32)
    with pytest.raises(RuntimeError, match='largest must come first'):
        graphs.capture(4, [(torch.zeros(8, 4, 1, 2), torch.zeros(8, 4, 1, 2))], attn_metadata=None)


def test_reset_drops_every_bucket_and_keeps_what_was_captured():
    from lmdeploy_focus_dev.testing.sdar_cpu import build_tiny_sdar
    sdar = build_tiny_sdar(block_length=4, hf_overrides={'dllm_focus': {'enable_focus': True}})
    runner = sdar.new_runner(page_size=16)
    runner.capture_step_graphs([2, 1])
    graphs = sdar.model.step_graphs
    assert set(graphs.buckets) == {1, 2} and graphs._block_offsets is not None and not graphs.has_dropped
    assert graphs.dropped_bucket(1) is None
    sdar.model.reset_step_graphs()
    assert graphs.buckets == {} and graphs._block_offsets is None and graphs._hidden is None
    assert graphs.capture_sizes == {1, 2} and graphs.dropped_bucket(1) == 1 and graphs.dropped_bucket(2) == 2
    assert graphs.dropped_bucket(3) is None  # above every bucket: eager, as before the reset


@pytest.mark.parametrize('overrides', [{'enable_focus': True}, {'enable_delayed_cache': True},
                                       {'enable_focus': True, 'focus_alpha': 'auto'}])
def test_a_capture_writes_no_kv(overrides):
    """A capture runs the step on padding sequences only: the KV cache is left as it was, so a bucket can be
    captured again while requests hold pages (after a graph reset while serving)."""
    from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, build_tiny_sdar
    sdar = build_tiny_sdar(TinySDARShape(num_layers=4), block_length=4, hf_overrides={'dllm_focus': overrides})
    runner = sdar.new_runner(page_size=16)
    for k_cache, v_cache in runner.kv_cache.caches:
        k_cache.normal_(), v_cache.normal_()
    before = [(k.clone(), v.clone()) for k, v in runner.kv_cache.caches]
    runner.capture_step_graphs([4, 2, 1])
    assert set(sdar.model.step_graphs.buckets) == {1, 2, 4}
    for layer, ((k_before, v_before), (k_cache, v_cache)) in enumerate(zip(before, runner.kv_cache.caches)):
        assert torch.equal(k_cache, k_before) and torch.equal(v_cache, v_before), layer


def test_a_bucket_dropped_by_a_reset_is_captured_again_at_its_next_step():
    """A graph reset while serving (upstream's weight update resets its graph runner and warms nothing up): the next
    step of a batch captures its bucket again, on the KV cache it runs on, and gives the logits the warm-up's graphs
    gave; other buckets wait for their own steps."""
    from types import SimpleNamespace

    from lmdeploy.pytorch import consts
    from lmdeploy_focus.models.step_state import focus_state
    from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
    from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, build_tiny_sdar
    L = 8
    tiny = build_tiny_sdar(TinySDARShape(num_layers=3), block_length=L,
                           hf_overrides={'dllm_focus': {'enable_delayed_cache': True, 'enable_focus': True}})
    runtime, graphs, mask_id = tiny.model.delayed_cache_runtime, tiny.model.step_graphs, tiny.model_config.dllm_mask_token
    results = []
    for reset in (False, True):
        runner = tiny.new_runner(page_size=16)
        if reset:  # the graphs point at the first runner's KV cache: the reset drops them, the step captures anew
            tiny.model.reset_step_graphs()
        else:
            runner.capture_step_graphs([8, 4])
        runner.prefill([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [7, 8]])
        blocks = runner.current_blocks()
        blocks[:, ::3] = mask_id  # some of every block masked
        input_mask = torch.where(blocks == mask_id, consts.DLLM_MASKED, consts.DLLM_UNMASKED)
        runtime.step_inputs = step_inputs_stub(
            delayed_state=DelayedCacheState.fresh(3, L), focus_state=focus_state.FocusState.fresh(3),
            next_rows_bound=None, extra_inputs=SimpleNamespace(dllm_mask=input_mask.flatten()),
            model_inputs=SimpleNamespace(history_lengths=torch.tensor(runner.history_lengths)))
        logits = runner.forward(runner.make_inputs(blocks.tolist(), runner.history_lengths, is_decoding=True))
        results.append((logits, runtime.step.fresh.clone()))
        runtime.end_step()
        assert set(graphs.buckets) == ({4} if reset else {4, 8}) and graphs.capture_sizes == {4, 8}
    (expected, fresh), (got, got_fresh) = results
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected)
    assert torch.equal(got_fresh, fresh)
    assert graphs.has_dropped and graphs.dropped_bucket(5) == 8 and graphs.dropped_bucket(3) is None


def test_decode_forwards_capture_only_while_no_request_is_tracked():
    """Only upstream's warm-up captures; a dummy decode forward during serving (e.g. an idle DP rank)
    must not capture in live traffic."""
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime
    from lmdeploy_focus.models.step_state.delayed_cache_state import DelayedCacheState
    runtime = DelayedCacheRuntime(block_length=4)
    assert runtime.serving_idle()  # no step inputs yet: engine start
    runtime.step_inputs = step_inputs_stub(delayed_state=None)
    assert runtime.serving_idle()  # step inputs rebuilt (start, wake-up)
    runtime.step_inputs.delayed_state = DelayedCacheState.fresh(0, 4)
    assert not runtime.serving_idle()  # a request has been prefilled: serving


def test_the_static_valid_flags_follow_every_batch_size_change():
    """``_fill`` rewrites the static ``seq_valid`` only when the batch size changes (the runtime passes None:
    all valid); a batch with its own flags is refused. Random size sequences."""
    from dataclasses import replace

    from lmdeploy_focus.models.step_graphs import _Bucket, _warmup_inputs
    from lmdeploy_focus.models.sparse_step import slice_batch
    bucket, length = 8, 4
    graphs = StepGraphs(parts=None, config=StepConfig(block_length=length, commit_mode='exact'), attention_rows=None)
    graphs._block_offsets = torch.zeros(bucket, 3, dtype=torch.int32)
    static = _warmup_inputs(bucket, length, 'cpu')
    entry = _Bucket(inputs=static, outputs=None)
    assert not static.seq_valid.any()  # as captured: padding only
    rng = random.Random()
    for _ in range(40):
        size = rng.randint(1, bucket)
        batch = replace(slice_batch(_warmup_inputs(bucket, length, 'cpu'), size), seq_valid=None)
        graphs._fill(entry, batch, torch.zeros(size, 2, dtype=torch.int32))
        assert static.seq_valid.tolist() == [True] * size + [False] * (bucket - size), size
    with pytest.raises(ValueError, match='seq_valid=None'):
        graphs._fill(entry, replace(batch, seq_valid=torch.ones(size, dtype=torch.bool)), torch.zeros(size, 2))


def test_fill_copies_every_field_into_the_first_rows_across_batch_size_changes():
    """``_fill`` copies through views made once per batch size (one foreach copy a step): random inputs at random
    sizes (each size met more than once) must land in the first B rows of every static field and of the page
    table, whatever size came before; a field of the wrong shape is refused by name, not broadcast."""
    from dataclasses import fields, replace

    from lmdeploy_focus.models.step_graphs import _Bucket, _warmup_inputs
    from lmdeploy_focus.models.sparse_step import slice_batch
    bucket, length, pages = 8, 4, 5
    graphs = StepGraphs(parts=None, config=StepConfig(block_length=length, commit_mode='exact'), attention_rows=None)
    graphs._block_offsets = torch.zeros(bucket, pages, dtype=torch.int32)
    static = _warmup_inputs(bucket, length, 'cpu', auto=True)
    entry = _Bucket(inputs=static, outputs=None)
    rng = random.Random()
    for _ in range(30):
        size = rng.randint(1, bucket)
        batch = replace(slice_batch(_warmup_inputs(bucket, length, 'cpu', auto=True), size), seq_valid=None)
        values = {}
        for f in fields(batch):
            value = getattr(batch, f.name)
            if value is None:
                continue
            if value.dtype == torch.bool:
                values[f.name] = torch.rand(value.shape) < 0.5
            elif value.dtype.is_floating_point:
                values[f.name] = torch.rand(value.shape, dtype=value.dtype)
            else:
                values[f.name] = torch.randint(0, 1000, value.shape, dtype=value.dtype)
        if rng.random() < 0.5:  # the optional inputs absent: the cached views must follow the field set too
            values.pop('alpha'), values.pop('shadow_seq')
            batch = replace(batch, alpha=None, shadow_seq=None)
        batch = replace(batch, **values)
        offsets = torch.randint(0, 100, (size, rng.randint(1, pages)), dtype=torch.int32)
        graphs._fill(entry, batch, offsets)
        for name, value in values.items():
            assert torch.equal(getattr(static, name)[:size], value), (name, size)
        assert torch.equal(graphs._block_offsets[:size, :offsets.size(1)], offsets)
    assert len(entry.fill_targets) <= 2 * bucket
    with pytest.raises(ValueError, match='input history has shape'):
        graphs._fill(entry, replace(batch, history=batch.history[:, None].expand(-1, 2)), offsets)
    plain = _Bucket(inputs=_warmup_inputs(bucket, length, 'cpu'), outputs=None)  # captured without auto's inputs
    with pytest.raises(ValueError, match=r"\['alpha', 'shadow_seq'\] were not captured"):
        graphs._fill(plain, replace(slice_batch(_warmup_inputs(bucket, length, 'cpu', auto=True), 2), seq_valid=None),
                     offsets[:2])


def test_the_batch_cut_of_the_outputs_leaves_row_and_debug_fields_whole():
    """``outputs_for_batch``: every per-sequence field (FOCUS's included) cut to B, the row-indexed ``rows`` and the
    3-element TP layout checksum kept whole (a cut of those would drop rows or checksum entries)."""
    from dataclasses import fields

    from lmdeploy_focus.models.sparse_step import (PER_SEQUENCE_OUTPUTS, DeepRows, FocusOutcome, FrontOutputs,
                                                   outputs_for_batch)
    bucket, length, size = 6, 4, 2
    rows = DeepRows(**{name: torch.arange(bucket * length) for name in ('position_ids', 'slot', 'q_start_loc',
                                                                      'q_seqlens', 'kv_seqlens', 'counts', 'logit_rows')})
    focus = FocusOutcome(**{f.name: torch.rand(bucket, length) for f in fields(FocusOutcome)})
    outputs = FrontOutputs(rows=rows, fresh=torch.rand(bucket, length) < 0.5, processed_per_seq=torch.arange(bucket),
                           uncached_next=torch.rand(bucket, length) < 0.5, masked_unprocessed=torch.rand(bucket, length)
                           < 0.5, focus=focus, layout_check=torch.arange(3))
    cut = outputs_for_batch(outputs, size)
    for name in PER_SEQUENCE_OUTPUTS:
        assert torch.equal(getattr(cut, name), getattr(outputs, name)[:size]), name
    for f in fields(FocusOutcome):
        assert torch.equal(getattr(cut.focus, f.name), getattr(focus, f.name)[:size]), f.name
    assert cut.rows is rows and cut.layout_check is outputs.layout_check
    assert set(PER_SEQUENCE_OUTPUTS) | {'rows', 'focus', 'layout_check'} == {f.name for f in fields(FrontOutputs)}
