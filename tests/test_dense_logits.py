"""The delayed-cache LM head: chunked over the rows that need logits, written into one persistent buffer.

It must give the sampler exactly what one full-size LM head at those rows' slots would (rows whose
slot is no longer masked, and padding rows past the valid ones, get none), never call the head on
more than ``logits_chunk_rows`` rows (a bs-256 MoE step ran out of memory with a ragged copy and
scatter temporaries next to the dense buffer), and reuse its buffer across steps of a shrinking batch.
"""
import random

import pytest
import torch

from lmdeploy_focus.models.sparse_step import DeepRows, _logit_rows
from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DecodeStep, DelayedCacheRuntime
from lmdeploy_focus.models.step_state.processing_set import ProcessingSet, gather_processed, scatter_processed

HIDDEN, VOCAB = 8, 11


class CountingHead:
    """A linear LM head that records how many rows each call got."""

    def __init__(self):
        self.weight = torch.randn(VOCAB, HIDDEN, dtype=torch.float64)  # fp64: chunked and whole GEMMs agree
        self.calls = []

    def __call__(self, hidden):
        self.calls.append(hidden.size(0))
        return hidden @ self.weight.T


def random_step(batch, length):
    """A step whose deep rows are a random processing set; some of its slots are still masked."""
    processed = torch.rand(batch, length) < random.uniform(0.2, 0.9)
    processed[:, 0] = True  # at least one row per sequence, as in a real step
    masked = torch.rand(batch, length) < random.uniform(0.0, 1.0)
    proc = ProcessingSet.from_mask(processed)
    needs_logits = gather_processed(masked, proc) & proc.valid_rows
    counts, logit_rows = _logit_rows(needs_logits, proc.total)
    rows = DeepRows(position_ids=None, slot=proc.flat_index, q_start_loc=proc.q_start_loc, q_seqlens=proc.q_seqlens,
                    kv_seqlens=None, counts=counts, logit_rows=logit_rows)
    num_rows, num_logit_rows = counts.tolist()
    step = DecodeStep(batch_size=batch, block_length=length, num_rows=num_rows, num_logit_rows=num_logit_rows,
                      rows=rows, fresh=processed, processed_per_seq=proc.q_seqlens, kept_per_seq=proc.q_seqlens)
    return step, processed & masked


@pytest.mark.parametrize('trial', range(8))
def test_chunked_lm_head_matches_full_head_at_the_masked_rows(trial):
    seed = random.randrange(2**31)  # fresh each run, named in failures
    random.seed(seed)
    torch.manual_seed(seed)
    batch, length = random.randint(1, 6), random.choice([4, 8, 16])
    chunk = random.choice([1, 3, 7, 1000])
    runtime = DelayedCacheRuntime(block_length=length, logits_chunk_rows=chunk)
    step, needs_logits = random_step(batch, length)
    runtime.step = step
    # the deep rows of a padded (row-bucket) step: rows past the valid ones are junk
    hidden = torch.randn(step.num_rows + random.randint(0, 5), HIDDEN, dtype=torch.float64)
    hidden[step.num_rows:] = float('nan')
    head = CountingHead()

    dense = runtime.dense_logits(hidden, head)

    proc = ProcessingSet.from_mask(step.fresh)
    full = scatter_processed(head(hidden[:step.num_rows]), proc, fill=0.0)
    expected = torch.where(needs_logits[..., None], full, torch.zeros_like(full)).view(batch * length, VOCAB)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-12, msg=lambda m: f'seed {seed}: {m}')
    assert not dense.isnan().any()
    assert max(head.calls[:-1]) <= chunk
    assert sum(head.calls[:-1]) == int(needs_logits.sum()) == step.num_logit_rows


def test_no_row_needs_logits_still_gives_the_sampler_its_buffer():
    length = 4
    runtime = DelayedCacheRuntime(block_length=length)
    proc = ProcessingSet.from_mask(torch.ones(2, length, dtype=torch.bool))
    counts, logit_rows = _logit_rows(torch.zeros(proc.num_rows, dtype=torch.bool), proc.total)
    rows = DeepRows(position_ids=None, slot=proc.flat_index, q_start_loc=proc.q_start_loc, q_seqlens=proc.q_seqlens,
                    kv_seqlens=None, counts=counts, logit_rows=logit_rows)
    runtime.step = DecodeStep(batch_size=2, block_length=length, num_rows=2 * length, num_logit_rows=0, rows=rows,
                              fresh=proc.processed, processed_per_seq=proc.q_seqlens, kept_per_seq=proc.q_seqlens)
    head = CountingHead()
    dense = runtime.dense_logits(torch.randn(2 * length, HIDDEN, dtype=torch.float64), head)
    assert dense.shape == (2 * length, VOCAB) and head.calls == [0]  # a commit step: no LM head rows


def test_buffer_reused_when_batch_shrinks_and_released_for_prefill():
    length = 8
    runtime = DelayedCacheRuntime(block_length=length, logits_chunk_rows=5)
    head = CountingHead()
    sizes = [4, 2, 4, 6]  # shrink, back, grow
    pointers = []
    for batch in sizes:
        step, _ = random_step(batch, length)
        runtime.step = step
        dense = runtime.dense_logits(torch.randn(step.num_rows, HIDDEN, dtype=torch.float64), head)
        assert dense.shape == (batch * length, VOCAB)
        pointers.append(dense.data_ptr())
    assert pointers[0] == pointers[1] == pointers[2], 'a smaller or equal batch must reuse the buffer'
    assert runtime._logits_buffer.size(0) == max(sizes) * length
    runtime.release_logits_buffer()
    assert runtime._logits_buffer is None


def test_scatter_in_chunks_equals_one_scatter():
    batch, length, width = 5, 8, 3
    proc = ProcessingSet.from_mask(torch.rand(batch, length) < 0.5)
    ragged = torch.randn(proc.num_rows, width)
    ragged[int(proc.total):] = float('nan')
    stale = torch.randn(batch, length, width)
    whole = scatter_processed(ragged, proc, out=stale.clone())
    chunked = stale.clone()
    for start in range(0, proc.num_rows, 3):
        scatter_processed(ragged[start:start + 3], proc, out=chunked, row_offset=start)
    assert torch.equal(whole, chunked)
    with pytest.raises(ValueError, match='rows'):
        scatter_processed(ragged[:4], proc, out=chunked, row_offset=proc.num_rows - 2)
