"""The delayed-cache LM head: chunked over the processed rows, written into one persistent buffer.

It must give the sampler exactly what one full-size LM head plus scatter would, never call the head
on more than ``logits_chunk_rows`` rows (the whole point: a bs-256 MoE step ran out of memory with a
ragged copy and scatter temporaries next to the dense buffer), let padding rows land nowhere, and
reuse its buffer across steps of a shrinking batch.
"""
import random

import pytest
import torch

from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DelayedCacheRuntime, DelayedCacheStep
from lmdeploy_focus.strategies.dllm.processing_set import ProcessingSet, scatter_processed

HIDDEN, VOCAB = 8, 11


class CountingHead:
    """A linear LM head that records how many rows each call got."""

    def __init__(self):
        self.weight = torch.randn(VOCAB, HIDDEN, dtype=torch.float64)  # fp64: chunked and whole GEMMs agree
        self.calls = []

    def __call__(self, hidden):
        self.calls.append(hidden.size(0))
        return hidden @ self.weight.T


def random_step(batch, length, static_rows):
    processed = torch.rand(batch, length) < random.uniform(0.2, 0.9)
    processed[:, 0] = True  # at least one row per sequence, as in a real step
    proc = ProcessingSet.from_mask(processed)
    num_rows = proc.num_rows if static_rows else int(proc.total)
    return DelayedCacheStep(proc=proc, meta=None, num_rows=num_rows, exact_rows=not static_rows)


@pytest.mark.parametrize('static_rows', [False, True])
@pytest.mark.parametrize('trial', range(6))
def test_chunked_lm_head_matches_full_scatter(static_rows, trial):
    seed = random.randrange(2**31)  # fresh each run, named in failures
    random.seed(seed)
    torch.manual_seed(seed)
    batch, length = random.randint(1, 6), random.choice([4, 8, 16])
    chunk = random.choice([1, 3, 7, 1000])
    runtime = DelayedCacheRuntime(block_length=length, logits_chunk_rows=chunk)
    step = runtime.step = random_step(batch, length, static_rows)
    hidden = torch.randn(step.num_rows, HIDDEN, dtype=torch.float64)
    total = int(step.proc.total)
    hidden[total:] = float('nan')  # padding rows of the static layout are junk
    head = CountingHead()

    dense = runtime.dense_logits(hidden, head)

    expected = scatter_processed(head(hidden), step.proc, fill=0.0).view(batch * length, VOCAB)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-12, msg=lambda m: f'seed {seed}: {m}')
    assert not dense.isnan().any()
    assert max(head.calls[:-1]) <= chunk
    assert sum(head.calls[:-1]) == step.num_rows
    assert step.logits_scattered


def test_buffer_reused_when_batch_shrinks_and_released_for_prefill():
    length = 8
    runtime = DelayedCacheRuntime(block_length=length, logits_chunk_rows=5)
    head = CountingHead()
    sizes = [4, 2, 4, 6]  # shrink, back, grow
    pointers = []
    for batch in sizes:
        step = runtime.step = random_step(batch, length, static_rows=False)
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
