"""Logits, sampling and unmasking on the rows that need them (issue 14 item 3, patch 17).

A delayed-cache / FOCUS step runs the LM head only on rows whose slot is still masked
(``DelayedCacheRuntime.row_logits``); upstream's sampler then runs on those rows with their gathered
sampling inputs (``sampling_rows.select_rows``) and the unmasker scores only them
(``RowLogitsUnmasking``). Each must give what the dense ``B*L`` path gives at those slots.
Random inputs, fresh each run (the seed is in every failure message).
"""
import asyncio
import random
from types import SimpleNamespace

import pytest
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.engine.logits_process import FusedLogitsProcessor, SamplingInputs
from lmdeploy_focus.models.sparse_step import DeepRows, _logit_rows
from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DecodeStep, DelayedCacheRuntime
from lmdeploy_focus.models.step_state.processing_set import ProcessingSet, gather_processed, scatter_processed
from lmdeploy_focus.strategies.dllm.sampling_rows import needs_dense_rows, select_rows
from lmdeploy_focus.strategies.dllm.unmasking_guard import (RowLogitsUnmasking, masked_but_unprocessed,
                                                             unmask_processed_only)
from lmdeploy_focus_dev.testing.step_inputs_stub import step_inputs_stub

HIDDEN, VOCAB = 8, 11
MASK_ID = VOCAB - 1
MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED


@pytest.fixture
def seed():
    value = random.randrange(2**31)
    random.seed(value)
    torch.manual_seed(value)
    return value


class CountingHead:
    """A linear LM head that records how many rows each call got."""

    def __init__(self):
        self.weight = torch.randn(VOCAB, HIDDEN, dtype=torch.float64)  # fp64: the row GEMM and the full one agree
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
    num_flagged, logit_rows = _logit_rows(needs_logits)
    counts = torch.stack([proc.total, num_flagged])
    rows = DeepRows(position_ids=None, slot=proc.flat_index, q_start_loc=proc.q_start_loc, q_seqlens=proc.q_seqlens,
                    kv_seqlens=None, counts=counts, logit_rows=logit_rows)
    num_rows, num_logit_rows = counts.tolist()
    step = DecodeStep(batch_size=batch, block_length=length, num_rows=num_rows, num_logit_rows=num_logit_rows,
                      rows=rows, fresh=processed, masked=masked, masked_unprocessed=masked & ~processed,
                      processed_per_seq=proc.q_seqlens, kept_per_seq=proc.q_seqlens)
    return step, processed & masked


@pytest.mark.parametrize('trial', range(8))
def test_row_logits_are_the_full_heads_rows_at_the_masked_slots(seed, trial):
    batch, length = random.randint(1, 6), random.choice([4, 8, 16])
    runtime = DelayedCacheRuntime(block_length=length)
    step, needs_logits = random_step(batch, length)
    runtime.step = step
    # the deep rows of a padded (row-bucket) step: rows past the valid ones are junk
    hidden = torch.randn(step.num_rows + random.randint(0, 5), HIDDEN, dtype=torch.float64)
    hidden[step.num_rows:] = float('nan')
    head = CountingHead()

    logits = runtime.row_logits(hidden, head)

    proc = ProcessingSet.from_mask(step.fresh)
    full = scatter_processed(head(hidden[:step.num_rows]), proc, fill=0.0).view(batch * length, VOCAB)
    head.calls.pop()
    if step.num_logit_rows == 0:  # a commit step: one zero row the unmasker never reads
        assert logits.shape == (1, VOCAB) and not logits.any() and runtime.logit_slots.tolist() == [0]
        assert head.calls == [1]
        return
    slots = runtime.logit_slots
    assert sorted(slots.tolist()) == needs_logits.flatten().nonzero().flatten().tolist(), f'seed {seed}'
    torch.testing.assert_close(logits, full[slots], rtol=0, atol=1e-12, msg=lambda m: f'seed {seed}: {m}')
    assert head.calls == [step.num_logit_rows]  # one LM-head call on exactly the rows that need logits
    # the dense layout (logprobs, custom processors): the same rows at their slots, zeros elsewhere
    dense = runtime.dense_logits(logits)
    expected = torch.where(needs_logits.flatten()[:, None], full, torch.zeros_like(full))
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-12, msg=lambda m: f'seed {seed}: {m}')


def random_sampling_inputs(rows: int, greedy: bool) -> SamplingInputs:
    """Per-row sampling inputs as upstream's DLLM strategy makes them (one row per block position)."""
    stop_words = torch.randint(0, VOCAB, (rows, 2))
    return SamplingInputs(temperature=torch.rand(rows) + 0.5,
                          repetition_penalty=torch.rand(rows) + 0.8,
                          generated_ids=torch.randint(0, VOCAB, (rows, 3)),
                          bad_words=torch.randint(0, VOCAB, (rows, 2)),
                          bad_mask=torch.rand(rows, 2) < 0.5,
                          stop_words=stop_words,
                          stop_mask=torch.ones_like(stop_words, dtype=torch.bool),
                          num_ignore_eos=torch.randint(0, 2, (rows, )),
                          top_k=torch.randint(1, VOCAB, (rows, )),
                          top_p=torch.rand(rows) * 0.5 + 0.5,
                          random_seeds=torch.randint(0, 2**31, (rows, )),
                          random_offsets=torch.randint(0, 100, (rows, )),
                          max_top_k=1 if greedy else VOCAB,
                          max_num_logprobs=-1,
                          logits_processors=[None] * rows,
                          batch_size=rows)


def test_select_rows_gathers_every_per_row_field(seed):
    rows = random.randint(4, 40)
    inputs = random_sampling_inputs(rows, greedy=False)
    slots = torch.randperm(rows)[:random.randint(1, rows)]
    picked = select_rows(inputs, slots)
    assert picked.batch_size == slots.numel() and inputs.batch_size == rows  # the step's inputs are not changed
    for name in ('temperature', 'repetition_penalty', 'generated_ids', 'bad_words', 'bad_mask', 'stop_words',
                 'stop_mask', 'num_ignore_eos', 'top_k', 'top_p', 'random_seeds', 'random_offsets'):
        assert torch.equal(getattr(picked, name), getattr(inputs, name)[slots]), f'seed {seed}: {name}'
    assert (picked.max_top_k, picked.max_num_logprobs) == (inputs.max_top_k, inputs.max_num_logprobs)


def test_logprobs_custom_processors_and_grammar_keep_the_dense_layout():
    plain = SamplingInputs(max_num_logprobs=-1, batch_size=4)
    assert not needs_dense_rows(plain)
    assert needs_dense_rows(SamplingInputs(max_num_logprobs=0, batch_size=4), logprobs_mode='raw_logprobs')
    # without an engine logprobs_mode upstream computes no logprobs: no B*L x V logits for them
    assert not needs_dense_rows(SamplingInputs(max_num_logprobs=5, batch_size=4), logprobs_mode=None)
    assert needs_dense_rows(SamplingInputs(max_num_logprobs=-1, logits_processors=[None, [abs], None, None],
                                           batch_size=4))
    assert not needs_dense_rows(SamplingInputs(max_num_logprobs=-1, logits_processors=[None] * 4, batch_size=4))
    assert needs_dense_rows(SamplingInputs(max_num_logprobs=-1, response_formats=(None, 'json'), batch_size=4))


@pytest.mark.parametrize('greedy', [True, pytest.param(False, marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="per-row seeded sampling is upstream's CUDA kernel (its CPU one ignores seeds)")])])
def test_upstream_sampler_on_the_rows_equals_the_dense_sampler_at_those_slots(seed, greedy):
    device = 'cpu' if greedy else 'cuda'
    rows = random.randint(4, 40)
    inputs = random_sampling_inputs(rows, greedy).to_device(device)
    logits = torch.randn(rows, VOCAB, device=device) * 3
    slots = torch.randperm(rows, device=device)[:random.randint(1, rows)]

    def sample(scores, sampling_inputs):
        processor = FusedLogitsProcessor(sampling_inputs)
        scores, _ = asyncio.run(processor(scores.clone()))
        return processor.sampling(scores)

    dense = sample(logits, inputs)
    picked = sample(logits[slots], select_rows(inputs, slots))
    assert torch.equal(picked, dense[slots]), f'seed {seed}'


def random_block_state(batch, length):
    mask = torch.where(torch.rand(batch, length) < 0.6, MASKED, UNMASKED).to(torch.long)
    mask[:, 0] = MASKED
    if batch > 1:
        mask[-1] = UNMASKED  # a block fully decoded: upstream turns it CACHED
    fresh = (torch.rand(batch, length) < 0.7) | (mask != MASKED)
    return mask.flatten(), fresh


@pytest.mark.parametrize('strategy', [UnmaskingStrategy.LOW_CONFIDENCE_STATIC, UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC])
def test_unmasking_from_the_rows_equals_unmasking_from_dense_logits(seed, strategy):
    batch, length = random.randint(1, 6), random.choice([4, 8])
    config = DLLMConfig(block_length=length, unmasking_strategy=strategy, denoising_steps=length // 2,
                        confidence_threshold=random.choice([0.05, 0.2, 0.9]))
    mask, fresh = random_block_state(batch, length)
    input_ids = torch.where(mask == MASKED, MASK_ID, torch.randint(0, VOCAB, mask.shape))
    logits = torch.randn(batch * length, VOCAB) * 2  # rows without fresh logits hold stale junk
    sampled = logits.argmax(-1)
    slots = ((mask == MASKED) & fresh.flatten()).nonzero().flatten()
    if slots.numel() == 0:
        slots = torch.zeros(1, dtype=torch.long)  # the runtime's one zero row of a step without logits

    unprocessed = masked_but_unprocessed(mask, fresh)
    want = unmask_processed_only(RowLogitsUnmasking(config), logits, input_ids, sampled, mask.clone(), unprocessed)
    got = unmask_processed_only(RowLogitsUnmasking(config), logits[slots], input_ids, sampled[slots], mask.clone(),
                                unprocessed, logit_slots=slots)
    assert torch.equal(got[0], want[0]), f'seed {seed}: next mask'
    assert torch.equal(got[1], want[1]), f'seed {seed}: next ids'


def test_agent_samples_the_rows_and_returns_every_slot(seed):
    """The agent strategy's patch-17 hook and post_sampling, end to end on one step."""
    from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
    batch, length = 3, 8
    config = DLLMConfig(block_length=length, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_STATIC,
                        denoising_steps=4)
    runtime = DelayedCacheRuntime(block_length=length)
    agent = DelayedCacheAgentStrategy(config, MASK_ID, runtime)
    step, needs_logits = random_step(batch, length)
    runtime.step = step
    hidden = torch.randn(step.num_rows, HIDDEN, dtype=torch.float64)
    logits = runtime.row_logits(hidden, CountingHead())
    inputs = random_sampling_inputs(batch * length, greedy=True)

    rows, picked = agent.sampling_rows(logits, inputs)
    assert rows is logits and picked.batch_size == logits.size(0)
    mask = torch.where(needs_logits | ~step.fresh, MASKED, UNMASKED).flatten()
    mask[~step.fresh.flatten() & (torch.rand(batch * length) < 0.5)] = UNMASKED
    runtime.step_inputs = step_inputs_stub(focus_state=None)
    ids = torch.where(mask == MASKED, MASK_ID, torch.randint(0, VOCAB, mask.shape))
    next_ids, extra = agent.post_sampling(SimpleNamespace(input_ids=ids), rows, rows.argmax(-1),
                                          SimpleNamespace(dllm_mask=mask.clone()))
    assert next_ids.shape == (batch * length, ) and runtime.step is None and runtime.logit_slots is None
    # a slot with fresh logits that was unmasked carries its sampled id; every other slot its input id
    decoded = (mask == MASKED) & (extra.dllm_mask == UNMASKED)
    assert decoded.any() or not needs_logits.any(), f'seed {seed}'
    expected = ids.clone()
    expected[step.rows.slot[step.rows.logit_rows[:step.num_logit_rows]]] = rows.argmax(-1)[:step.num_logit_rows]
    assert torch.equal(next_ids[decoded], expected[decoded]), f'seed {seed}'
    assert torch.equal(next_ids[mask != MASKED], ids[mask != MASKED]), f'seed {seed}'
