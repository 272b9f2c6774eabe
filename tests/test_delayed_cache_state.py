"""Delayed-cache device math (state, processing set, ragged layout, unmasking guard).

Every vectorised function is checked against a deliberately simple per-sequence Python-loop
reference of the spec rules (focus-spec §2.1–2.2) written here, on fresh random inputs each run.
"""
import random

import pytest
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.strategies.dllm.unmasking import UnmaskingProcessor
from lmdeploy_focus.models.step_state.delayed_cache_state import (DelayedCacheState, advance, advance_after_step,
                                                                append_fresh, readiness_update, reset_rows, select,
                                                                starts_new_block)
from lmdeploy_focus.models.step_state.processing_set import (ProcessingSet, gather_processed, processing_mask,
                                                           processing_positions, ragged_step_metadata,
                                                           scatter_processed)
from lmdeploy_focus.strategies.dllm.unmasking_guard import masked_but_unprocessed, unmask_processed_only

MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED
BLOCK_LENGTHS = (1, 2, 3, 4, 8, 16, 32)
STRATEGIES = (UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC, UnmaskingStrategy.LOW_CONFIDENCE_STATIC,
              UnmaskingStrategy.SEQUENTIAL)

# ---------------------------------------------------------------- random inputs


def random_mask_row(length):
    kind = random.choice(['masked', 'unmasked', 'cached', 'mixed3', 'mixed2', 'prompt_tail'])
    if kind == 'masked':
        return [MASKED] * length
    if kind == 'unmasked':
        return [UNMASKED] * length
    if kind == 'cached':
        return [CACHED] * length
    if kind == 'mixed3':
        return [random.choice([MASKED, UNMASKED, CACHED]) for _ in range(length)]
    if kind == 'mixed2':
        return [random.choice([MASKED, UNMASKED]) for _ in range(length)]
    prompt = random.randint(0, length)
    return [UNMASKED] * prompt + [MASKED] * (length - prompt)


def random_mask(batch, length):
    return torch.tensor([random_mask_row(length) for _ in range(batch)], dtype=torch.long).view(batch, length)


def random_bool_rows(batch, length):
    rows = []
    for _ in range(batch):
        kind = random.choice(['all', 'none', 'random', 'one'])
        if kind == 'all':
            rows.append([True] * length)
        elif kind == 'none':
            rows.append([False] * length)
        elif kind == 'one':
            hit = random.randrange(length)
            rows.append([p == hit for p in range(length)])
        else:
            rows.append([random.random() < 0.5 for _ in range(length)])
    return torch.tensor(rows, dtype=torch.bool).view(batch, length)


def random_state(batch, length):
    return DelayedCacheState(uncached=random_bool_rows(batch, length),
                             needs_warmup=torch.rand(batch) < 0.3)


def random_shape(max_batch=9):
    return random.randint(1, max_batch), random.choice(BLOCK_LENGTHS)


# ---------------------------------------------------------------- references (per sequence, plain lists)


def ref_ready(mask_row):
    n = len(mask_row)
    return [mask_row[p] != MASKED and (p == n - 1 or mask_row[p + 1] != MASKED) for p in range(n)]


def ref_readiness(uncached_row, mask_row):
    return [u and not r for u, r in zip(uncached_row, ref_ready(mask_row))]


def ref_processing(uncached_row, needs_warmup):
    if needs_warmup or not any(uncached_row):
        return list(range(len(uncached_row)))
    return [p for p, u in enumerate(uncached_row) if u]


def lists(t):
    return t.tolist()


# ---------------------------------------------------------------- state


def test_fresh_state():
    batch, length = random_shape()
    state = DelayedCacheState.fresh(batch, length)
    assert state.uncached.shape == (batch, length) and state.uncached.dtype == torch.bool
    assert state.needs_warmup.shape == (batch, ) and state.needs_warmup.dtype == torch.bool
    assert state.uncached.all() and state.needs_warmup.all()
    assert (state.batch_size, state.block_length) == (batch, length)
    empty = DelayedCacheState.fresh(0, length)
    assert empty.uncached.shape == (0, length)


@pytest.mark.parametrize('trial', range(20))
def test_readiness_update_matches_reference(trial):
    batch, length = random_shape()
    uncached = random_bool_rows(batch, length)
    mask = random_mask(batch, length)
    before = uncached.clone()
    got = readiness_update(uncached, mask)
    want = [ref_readiness(u, m) for u, m in zip(lists(uncached), lists(mask))]
    assert lists(got) == want
    # the flat [B*L] upstream layout works too, and the input is not modified
    assert lists(readiness_update(uncached, mask.flatten())) == want
    assert torch.equal(uncached, before)


def test_readiness_rule_examples():
    # last position's right neighbour counts as not masked; CACHED counts as not masked
    mask = torch.tensor([[UNMASKED, MASKED, UNMASKED, CACHED], [MASKED] * 4, [UNMASKED] * 4])
    got = readiness_update(torch.ones(3, 4, dtype=torch.bool), mask)
    assert lists(got) == [[True, True, False, False], [True] * 4, [False] * 4]


@pytest.mark.parametrize('trial', range(10))
def test_advance_reset_and_new_block(trial):
    batch, length = random_shape()
    state = random_state(batch, length)
    input_mask = random_mask(batch, length)
    next_mask = random_mask(batch, length)

    advanced = advance(state, input_mask)
    assert not advanced.needs_warmup.any()
    assert lists(advanced.uncached) == [ref_readiness(u, m) for u, m in zip(lists(state.uncached), lists(input_mask))]

    committed = starts_new_block(next_mask.flatten(), length)
    assert lists(committed) == [all(v == CACHED for v in row) for row in lists(next_mask)]

    rows = torch.rand(batch) < 0.5
    reset = reset_rows(state, rows)
    for b in range(batch):
        if rows[b]:
            assert reset.uncached[b].all() and reset.needs_warmup[b]
        else:
            assert lists(reset.uncached[b]) == lists(state.uncached[b])
            assert reset.needs_warmup[b] == state.needs_warmup[b]

    full = advance_after_step(state, input_mask, next_mask)
    for b in range(batch):
        if lists(committed)[b]:
            assert full.uncached[b].all() and full.needs_warmup[b]
        else:
            assert lists(full.uncached[b]) == ref_readiness(lists(state.uncached[b]), lists(input_mask[b]))
            assert not full.needs_warmup[b]


@pytest.mark.parametrize('trial', range(10))
def test_select_and_append_fresh(trial):
    batch, length = random_shape()
    state = random_state(batch, length)
    keep = torch.randperm(batch)[:random.randint(0, batch)]  # survivors, reordered
    picked = select(state, keep)
    assert lists(picked.uncached) == [lists(state.uncached[i]) for i in lists(keep)]
    assert lists(picked.needs_warmup) == [bool(state.needs_warmup[i]) for i in lists(keep)]

    joining = DelayedCacheState.fresh(random.randint(0, 4), length)
    merged = append_fresh(picked, joining.batch_size)
    assert lists(merged.uncached) == lists(picked.uncached) + lists(joining.uncached)
    assert lists(merged.needs_warmup) == lists(picked.needs_warmup) + lists(joining.needs_warmup)
    # joining sequences warm up: their first decode step processes the whole block
    proc = processing_positions(merged)
    assert proc.processed[picked.batch_size:].all()


# ---------------------------------------------------------------- processing set


def check_layout(proc: ProcessingSet, processed_rows, length):
    """Compare every field of ``proc`` with the per-sequence lists of processed positions."""
    batch = len(processed_rows)
    valid = [(b, p) for b in range(batch) for p in processed_rows[b]]
    padding = [(b, p) for b in range(batch) for p in range(length) if p not in processed_rows[b]]
    assert lists(proc.processed) == [[p in ps for p in range(length)] for ps in processed_rows]
    assert lists(proc.positions) == [ps + [length] * (length - len(ps)) for ps in processed_rows]
    assert lists(proc.q_seqlens) == [len(ps) for ps in processed_rows]
    starts, acc = [], 0
    for ps in processed_rows:
        starts.append(acc)
        acc += len(ps)
    assert lists(proc.q_start_loc) == starts
    assert int(proc.total) == len(valid)
    assert lists(proc.rightmost) == [max(ps) if ps else -1 for ps in processed_rows]
    # valid rows first (sequence by sequence, ascending), then the unprocessed slots in (b, p) order
    assert lists(proc.flat_index) == [b * length + p for b, p in valid + padding]
    assert lists(proc.seq_index) == [b for b, _ in valid + padding]
    assert lists(proc.block_pos) == [p for _, p in valid + padding]
    assert lists(proc.valid_rows) == [True] * len(valid) + [False] * len(padding)
    rows = valid + padding
    assert lists(proc.ragged_row) == [[rows.index((b, p)) for p in range(length)] for b in range(batch)]


@pytest.mark.parametrize('trial', range(20))
def test_processing_positions_matches_reference(trial):
    batch, length = random_shape()
    state = random_state(batch, length)
    proc = processing_positions(state)
    want = [ref_processing(u, w) for u, w in zip(lists(state.uncached), lists(state.needs_warmup))]
    check_layout(proc, want, length)
    assert lists(processing_mask(state)) == lists(proc.processed)
    # never empty, always includes every uncached position
    assert (proc.q_seqlens > 0).all()
    assert (proc.processed | ~state.uncached).all()


@pytest.mark.parametrize('trial', range(10))
def test_layout_of_arbitrary_selection(trial):
    """FOCUS will hand in reduced selections, empty rows included."""
    batch, length = random_shape()
    selection = random_bool_rows(batch, length)
    proc = ProcessingSet.from_mask(selection)
    check_layout(proc, [[p for p in range(length) if row[p]] for row in lists(selection)], length)


def test_empty_batch():
    state = DelayedCacheState.fresh(0, 8)
    proc = processing_positions(state)
    assert proc.flat_index.shape == (0, ) and int(proc.total) == 0
    meta = ragged_step_metadata(proc, torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, dtype=torch.long))
    assert meta.position_ids.shape == (0, ) and meta.kv_seqlens.shape == (0, )


@pytest.mark.parametrize('trial', range(10))
def test_ragged_step_metadata_matches_reference(trial):
    batch, length = random_shape()
    state = random_state(batch, length)
    history = torch.randint(0, 1000, (batch, )) * length
    ignored = torch.randint(0, 5, (batch, ))
    dense_ids = torch.randint(0, 50000, (batch, length))
    proc = processing_positions(state)
    meta = ragged_step_metadata(proc, history, dense_ids.flatten()[None], num_ignored_history=ignored)

    sets = [ref_processing(u, w) for u, w in zip(lists(state.uncached), lists(state.needs_warmup))]
    valid = [(b, p) for b in range(batch) for p in sets[b]]
    h, ids = lists(history), lists(dense_ids)
    # the whole block is visible to a sequence with rows (stock's view); history alone without
    assert lists(meta.kv_seqlens) == [h[b] + (length if sets[b] else 0) - lists(ignored)[b] for b in range(batch)]
    assert lists(meta.position_ids[:len(valid)]) == [h[b] + p for b, p in valid]
    assert lists(meta.input_ids[:len(valid)]) == [ids[b][p] for b, p in valid]
    assert lists(meta.q_seqlens) == [len(s) for s in sets]
    assert meta.max_q_seqlen == length and meta.num_rows == batch * length
    assert meta.position_ids.shape == meta.input_ids.shape == (batch * length, )
    # padding rows carry the real id / position of an unprocessed slot: finite, harmless inputs
    for row in range(len(valid), batch * length):
        b, p = divmod(int(proc.flat_index[row]), length)
        assert int(meta.input_ids[row]) == ids[b][p] and int(meta.position_ids[row]) == h[b] + p

    # a caller that knows the total on the host may run exactly the valid rows
    exact = ragged_step_metadata(proc, history, dense_ids, num_rows=len(valid))
    assert lists(exact.input_ids) == lists(meta.input_ids[:len(valid)])
    assert lists(ragged_step_metadata(proc, history).kv_seqlens) == [h[b] + (length if sets[b] else 0)
                                                                     for b in range(batch)]


# ---------------------------------------------------------------- gather / scatter


@pytest.mark.parametrize('trial', range(10))
def test_gather_scatter_round_trip(trial):
    batch, length = random_shape()
    hidden = random.randint(1, 5)
    proc = ProcessingSet.from_mask(random_bool_rows(batch, length))
    processed = lists(proc.processed)
    total = int(proc.total)
    dense = torch.randn(batch, length, hidden)

    ragged = gather_processed(dense, proc)
    assert ragged.shape == (batch * length, hidden)
    valid = [(b, p) for b in range(batch) for p in range(length) if processed[b][p]]
    for row, (b, p) in enumerate(valid):
        assert torch.equal(ragged[row], dense[b, p])

    # padding rows of a model output are junk: they must never land in the dense buffer
    ragged_out = ragged.clone()
    ragged_out[total:] = float('nan')

    fresh = scatter_processed(ragged_out, proc, fill=-7.0)
    stale = torch.randn(batch, length, hidden)
    buffer = stale.clone()
    returned = scatter_processed(ragged_out, proc, out=buffer)
    assert returned.data_ptr() == buffer.data_ptr()
    refilled = scatter_processed(ragged_out, proc, out=stale.clone(), fill=3.0)
    exact_rows = scatter_processed(ragged_out[:total], proc, out=stale.clone())
    for b in range(batch):
        for p in range(length):
            if processed[b][p]:
                for got in (fresh, buffer, refilled, exact_rows):
                    assert torch.equal(got[b, p], dense[b, p])
            else:
                assert (fresh[b, p] == -7.0).all() and (refilled[b, p] == 3.0).all()
                assert torch.equal(buffer[b, p], stale[b, p]) and torch.equal(exact_rows[b, p], stale[b, p])

    # 2-D blocks (ids) round trip as well
    ids = torch.randint(0, 100, (batch, length))
    back = scatter_processed(gather_processed(ids, proc), proc, fill=-1)
    assert torch.equal(back, torch.where(proc.processed, ids, torch.full_like(ids, -1)))


# ---------------------------------------------------------------- unmasking guard


def make_processor(strategy, length):
    steps = random.choice([d for d in range(1, length + 1) if length % d == 0])
    config = DLLMConfig(block_length=length,
                        unmasking_strategy=strategy,
                        denoising_steps=steps,
                        confidence_threshold=random.uniform(0.1, 0.6))
    return UnmaskingProcessor(config)


def ref_unmask(config, scores, input_ids, token_ids, mask, processed):
    """Upstream's strategies, per sequence, over the processed MASKED slots only."""
    length = config.block_length
    topk = max(1, min(length // config.denoising_steps, length))
    out_mask, out_ids = [], []
    for b in range(len(mask)):
        row = list(mask[b])
        eligible = [p for p in range(length) if row[p] == MASKED and processed[b][p]]
        out_ids += [token_ids[b][p] if p in eligible else input_ids[b][p] for p in range(length)]
        if all(v == UNMASKED for v in row):
            out_mask += [CACHED] * length
            continue
        if config.unmasking_strategy == UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC:
            chosen = {p for p in eligible if scores[b][p] >= config.confidence_threshold}
            if eligible:
                chosen.add(max(eligible, key=lambda p: scores[b][p]))
        elif config.unmasking_strategy == UnmaskingStrategy.LOW_CONFIDENCE_STATIC:
            chosen = set(sorted(eligible, key=lambda p: -scores[b][p])[:topk])
        else:
            first = eligible[0] if eligible else 0
            chosen = {(first + j) % length for j in range(topk)} & set(eligible)
        out_mask += [UNMASKED if p in chosen else row[p] for p in range(length)]
    return out_mask, out_ids


def random_unmasking_inputs(batch, length, vocab=8):
    logits = torch.randn(batch * length, vocab) * 2
    token_ids = logits.argmax(-1)
    input_ids = torch.randint(0, vocab, (batch * length, ))
    mask = random_mask(batch, length).flatten()
    return logits, input_ids, token_ids, mask


def confidence(logits, input_ids, token_ids, mask):
    """Upstream's score of each slot (prob of the sampled token; input id for non-masked slots)."""
    ids = torch.where(mask != MASKED, input_ids, token_ids)
    return logits.softmax(-1).gather(-1, ids[:, None]).flatten()


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('trial', range(5))
def test_guard_equals_upstream_when_everything_is_processed(strategy, trial):
    batch, length = random_shape()
    processor = make_processor(strategy, length)
    logits, input_ids, token_ids, mask = random_unmasking_inputs(batch, length)
    proc = ProcessingSet.from_mask(torch.ones(batch, length, dtype=torch.bool))
    assert not masked_but_unprocessed(mask, proc.processed).any()
    want_mask, want_ids = processor(logits, input_ids, token_ids, mask.clone())
    got_mask, got_ids = unmask_processed_only(processor, logits, input_ids, token_ids, mask,
                                               masked_but_unprocessed(mask, proc.processed))
    assert torch.equal(got_mask, want_mask) and torch.equal(got_ids, want_ids)
    # None (delayed cache alone: no masked slot is ever left out) is the same, and leaves the caller's mask alone
    mask_before = mask.clone()
    got_mask, got_ids = unmask_processed_only(processor, logits, input_ids, token_ids, mask, None)
    assert torch.equal(got_mask, want_mask) and torch.equal(got_ids, want_ids)
    assert torch.equal(mask, mask_before)


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('trial', range(8))
def test_guard_never_unmasks_unprocessed_slots(strategy, trial):
    batch, length = random_shape()
    processor = make_processor(strategy, length)
    logits, input_ids, token_ids, mask = random_unmasking_inputs(batch, length)
    proc = ProcessingSet.from_mask(random_bool_rows(batch, length))
    hidden = masked_but_unprocessed(mask, proc.processed)
    assert lists(hidden) == [[m == MASKED and not s for m, s in zip(mr, sr)]
                             for mr, sr in zip(lists(mask.view(batch, length)), lists(proc.processed))]
    # stale rows at hidden slots look certain: a guard-less unmasker would pick them first
    stale = logits.clone()
    stale[hidden.flatten()] = 0.0
    stale[hidden.flatten(), 0] = 50.0
    sampled = torch.where(hidden.flatten(), torch.zeros_like(token_ids), token_ids)
    mask_before = mask.clone()

    got_mask, got_ids = unmask_processed_only(processor, stale, input_ids, sampled, mask, hidden)
    assert torch.equal(mask, mask_before), 'the caller mask must not be modified'
    assert (got_mask[hidden.flatten()] == MASKED).all()
    scores = confidence(stale, input_ids, sampled, mask).view(batch, length)
    want_mask, want_ids = ref_unmask(processor.dllm_config, lists(scores), lists(input_ids.view(batch, length)),
                                     lists(sampled.view(batch, length)), lists(mask.view(batch, length)),
                                     lists(proc.processed))
    assert lists(got_mask) == want_mask
    assert lists(got_ids) == want_ids


def test_guard_without_strategy_returns_mask_and_ids():
    batch, length = random_shape()
    processor = UnmaskingProcessor(DLLMConfig(block_length=length, unmasking_strategy=None))
    logits, input_ids, token_ids, mask = random_unmasking_inputs(batch, length)
    proc = ProcessingSet.from_mask(random_bool_rows(batch, length))
    got_mask, got_ids = unmask_processed_only(processor, logits, input_ids, token_ids, mask,
                                               masked_but_unprocessed(mask, proc.processed))
    assert torch.equal(got_mask, mask) and torch.equal(got_ids, token_ids)


# ---------------------------------------------------------------- multi-step simulation


class RefSequence:
    """Host-side per-sequence delayed-cache state, as spec §2.1 describes it."""

    def __init__(self, length):
        self.length = length
        self.reset()

    def reset(self):
        self.uncached = [True] * self.length
        self.needs_warmup = True

    def processing(self):
        return ref_processing(self.uncached, self.needs_warmup)

    def after_step(self, input_mask, next_mask):
        self.uncached = ref_readiness(self.uncached, input_mask)
        self.needs_warmup = False
        if all(v == CACHED for v in next_mask):
            self.reset()


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('evict', [False, True])
def test_block_decoding_simulation(strategy, evict):
    """Decode two blocks per sequence with random confidences through the real functions.

    Invariants: every MASKED slot is in the processing set; a token decoded in step t is processed
    again in step t+1; nothing is decoded outside what was forwarded (``evict`` drops random masked
    slots FOCUS-style, keeping the leftmost, so the guard is exercised); the device state follows
    the per-sequence reference.
    """
    batch, length = random.randint(1, 6), random.choice((4, 8, 16))
    vocab, mask_token = 16, 15  # the mask token is part of the vocabulary, as in SDAR
    processor = make_processor(strategy, length)
    prompt_tail = [random.randint(0, length - 1) for _ in range(batch)]  # first block: prompt tail + masks
    mask = torch.tensor([[UNMASKED] * k + [MASKED] * (length - k) for k in prompt_tail])
    ids = torch.where(mask == MASKED, mask_token, torch.randint(0, mask_token, (batch, length)))
    history = torch.randint(0, 50, (batch, )) * length
    state = DelayedCacheState.fresh(batch, length)
    refs = [RefSequence(length) for _ in range(batch)]
    logits_buffer = torch.randn(batch, length, vocab) * 10  # stale content from "earlier steps"
    decoded_last_step = torch.zeros(batch, length, dtype=torch.bool)
    blocks_done = [0] * batch

    for _ in range(4 * (length + 2)):
        if min(blocks_done) >= 2:
            break
        proc = processing_positions(state)
        assert lists(proc.processed) == [[p in r.processing() for p in range(length)] for r in refs]
        assert (proc.processed | (mask != MASKED)).all(), 'a masked slot was left out'
        assert (proc.processed | ~decoded_last_step).all(), 'a freshly decoded token was not re-processed'
        assert (proc.processed[state.needs_warmup]).all()

        forwarded = proc
        if evict:
            masked = mask == MASKED
            leftmost = masked & (masked.long().cumsum(1) == 1)
            drop = masked & ~leftmost & (torch.rand(batch, length) < 0.5)
            forwarded = ProcessingSet.from_mask(proc.processed & ~drop)

        meta = ragged_step_metadata(forwarded, history, ids)
        assert lists(meta.kv_seqlens) == lists(torch.where(forwarded.q_seqlens > 0, history + length, history))
        # "model": fresh random logits for every forwarded row; padding rows are junk
        ragged_logits = torch.randn(batch * length, vocab) * 3
        ragged_logits[int(forwarded.total):] = float('nan')
        logits = scatter_processed(ragged_logits, forwarded, out=logits_buffer).view(-1, vocab)
        sampled = logits.nan_to_num().argmax(-1)

        input_mask = mask.clone()
        next_mask, next_ids = unmask_processed_only(processor, logits, ids.flatten(), sampled, mask.flatten(),
                                                    masked_but_unprocessed(mask, forwarded.processed))
        next_mask = next_mask.view(batch, length)
        decoded = (input_mask == MASKED) & (next_mask == UNMASKED)
        assert (forwarded.processed | ~decoded).all(), 'decoded a slot that was not forwarded'
        assert not (decoded & torch.isnan(logits.view(batch, length, vocab)).any(-1)).any()

        state = advance_after_step(state, input_mask, next_mask)
        for b, ref in enumerate(refs):
            ref.after_step(lists(input_mask[b]), lists(next_mask[b]))
        assert lists(state.uncached) == [r.uncached for r in refs]
        assert lists(state.needs_warmup) == [r.needs_warmup for r in refs]

        # upstream step_decode: masked slots carry the mask token; a committed block starts afresh
        committed = starts_new_block(next_mask, length)
        ids = torch.where(next_mask == MASKED, mask_token, next_ids.view(batch, length))
        ids[committed] = mask_token
        next_mask[committed] = MASKED
        history = history + committed.long() * length
        for b in range(batch):
            blocks_done[b] += int(committed[b])
        decoded_last_step = decoded & ~committed[:, None]
        mask = next_mask
    assert min(blocks_done) >= 2, 'blocks did not finish'


# ---------------------------------------------------------------- no host sync


def run_everything(batch, length, device, vocab=8, with_unmasking=True):
    """Every function once; returns all outputs (for shape checks). Inputs are made on ``device``."""
    state = DelayedCacheState(uncached=random_bool_rows(batch, length).to(device),
                              needs_warmup=(torch.rand(batch) < 0.5).to(device))
    mask = random_mask(batch, length).to(device)
    next_mask = random_mask(batch, length).to(device)
    ids = torch.randint(0, vocab, (batch, length)).to(device)
    history = torch.randint(0, 99, (batch, )).to(device)
    dense = torch.randn(batch, length, vocab).to(device)
    indices = torch.randperm(batch)[:min(3, batch)].to(device)
    processor = make_processor(UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC, length)
    return _run_everything(state, mask, next_mask, ids, history, dense, indices, processor, with_unmasking)


def _run_everything(state, mask, next_mask, ids, history, dense, indices, processor, with_unmasking):
    batch, length = state.uncached.shape
    out = {}
    out['fresh'] = DelayedCacheState.fresh(batch, length, device=state.device)
    out['readiness'] = readiness_update(state.uncached, mask)
    out['advanced'] = advance_after_step(state, mask, next_mask.flatten())
    out['reset'] = reset_rows(state, starts_new_block(next_mask, length))
    out['selected'] = select(state, indices)
    out['merged'] = append_fresh(state, batch)
    proc = processing_positions(state)
    out['proc'] = proc
    out['subset'] = ProcessingSet.from_mask(proc.processed & (mask != MASKED))
    out['meta'] = ragged_step_metadata(proc, history, ids, num_ignored_history=history // 2)
    out['gathered'] = gather_processed(dense, proc)
    out['scattered'] = scatter_processed(out['gathered'], proc, out=dense.clone(), fill=0.5)
    out['scattered_new'] = scatter_processed(out['gathered'], proc, fill=0.0)
    out['hidden'] = masked_but_unprocessed(mask, proc.processed)  # the unmasker may decide processed masked slots
    if with_unmasking:
        logits = out['scattered'].view(batch * length, -1)
        out['unmasked'] = unmask_processed_only(processor, logits, ids.flatten(), logits.argmax(-1), mask.flatten(),
                                                out['hidden'])
    return out


def shapes(obj):
    if isinstance(obj, torch.Tensor):
        return (tuple(obj.shape), obj.dtype)
    if isinstance(obj, (tuple, list)):
        return tuple(shapes(o) for o in obj)
    if isinstance(obj, dict):
        return {k: shapes(v) for k, v in obj.items()}
    if hasattr(obj, '__dataclass_fields__'):
        return {k: shapes(getattr(obj, k)) for k in obj.__dataclass_fields__}
    return obj


def test_output_shapes_depend_only_on_batch_and_block():
    batch, length = random.randint(2, 8), random.choice((4, 8, 32))
    first = shapes(run_everything(batch, length, 'cpu'))
    for _ in range(5):
        assert shapes(run_everything(batch, length, 'cpu')) == first


def test_runs_on_meta_tensors():
    """Meta tensors have no data: any host read or data-dependent shape would raise here."""
    batch, length, vocab = 5, 8, 8
    meta = torch.device('meta')
    state = DelayedCacheState(uncached=torch.empty(batch, length, dtype=torch.bool, device=meta),
                              needs_warmup=torch.empty(batch, dtype=torch.bool, device=meta))
    mask = torch.empty(batch, length, dtype=torch.long, device=meta)
    out = _run_everything(state, mask, mask.clone(), torch.empty(batch, length, dtype=torch.long, device=meta),
                          torch.empty(batch, dtype=torch.long, device=meta),
                          torch.empty(batch, length, vocab, device=meta),
                          torch.empty(3, dtype=torch.long, device=meta), None, with_unmasking=False)
    cpu = run_everything(batch, length, 'cpu', vocab=vocab, with_unmasking=False)
    assert shapes(out) == shapes(cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('strategy', (None, ) + STRATEGIES)
def test_no_host_sync_on_cuda(strategy):
    """All functions (and, per strategy, the guarded upstream unmasker) under sync-debug 'error'."""
    batch, length = 16, 32
    torch.zeros(1, device='cuda')  # initialise CUDA before the detector is on

    def inputs(device):
        state = DelayedCacheState(uncached=uncached.to(device), needs_warmup=needs_warmup.to(device))
        return (state, *(t.to(device) for t in tensors), processor)

    uncached, needs_warmup = random_bool_rows(batch, length), torch.rand(batch) < 0.5
    processor = make_processor(strategy or UnmaskingStrategy.LOW_CONFIDENCE_DYNAMIC, length)  # steps drawn once
    tensors = (random_mask(batch, length), random_mask(batch, length), torch.randint(0, 8, (batch, length)),
               torch.randint(0, 99, (batch, )), torch.randn(batch, length, 8), torch.randperm(batch)[:3])
    args = inputs('cuda')
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with pytest.raises(RuntimeError):  # the detector is live
            args[1].sum().item()
        out = _run_everything(*args, with_unmasking=strategy is not None)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    torch.cuda.synchronize()
    expected = _run_everything(*inputs('cpu'), with_unmasking=strategy is not None)  # the same inputs on CPU
    assert shapes(out) == shapes(expected)
    got, want = dict(leaves(out)), dict(leaves(expected))
    assert got.keys() == want.keys()
    for name, value in want.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[name].cpu(), value, msg=lambda m: f'{name}: {m}')
        else:
            assert torch.equal(got[name].cpu(), value), name


def leaves(obj, name='out'):
    """(path, tensor) for every tensor in nested dicts, sequences and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, (tuple, list)):
        for i, item in enumerate(obj):
            yield from leaves(item, f'{name}[{i}]')
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from leaves(item, f'{name}.{key}')
    elif hasattr(obj, '__dataclass_fields__'):
        for key in obj.__dataclass_fields__:
            yield from leaves(getattr(obj, key), f'{name}.{key}')
