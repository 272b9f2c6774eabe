"""DLLM logprobs (strategies/dllm/block_logprobs.py): a request is sent, with each completed block, the
logprob of every token it returns, taken from the step that unmasked that token; nothing while the
block is incomplete; never the prompt's positions. Random decode orders, fresh each run."""
import random
from types import SimpleNamespace

import numpy as np
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.engine.model_agent.agent import BatchedLogProbs
from lmdeploy.pytorch.messages import MessageStatus
from lmdeploy_focus.strategies.dllm.block_logprobs import emit_block_logprobs

MASKED, UNMASKED = consts.DLLM_MASKED, consts.DLLM_UNMASKED


def make_seq(block, prompt_in_block, num_logprobs):
    mask = np.full(block, MASKED, dtype=np.uint8)
    mask[:prompt_in_block] = UNMASKED
    return SimpleNamespace(status=MessageStatus.RUNNING, sampling_param=SimpleNamespace(num_logprobs=num_logprobs),
                           dllm_mask=mask)


def step(seqs, new_masks, width, is_decoding, stopped=None):
    """One step's outputs as the engine loop holds them (CPU), run through the rewrite."""
    B, L = len(seqs), new_masks.shape[1]
    vals = torch.randn(B * L, width)
    indices = torch.randint(0, 1000, (B * L, width), dtype=torch.int32)
    outputs = SimpleNamespace(logprobs=BatchedLogProbs(vals=vals.clone(), indices=indices.clone()),
                              extra_outputs=SimpleNamespace(dllm_mask=torch.from_numpy(new_masks.reshape(-1))),
                              stopped=torch.tensor(stopped or [False] * B))
    inputs = SimpleNamespace(is_decoding=is_decoding, logits_indices=None, is_chunk=False, is_last_chunk=True)
    emit_block_logprobs(outputs, seqs, inputs, L)
    for seq, mask in zip(seqs, new_masks):
        seq.dllm_mask = mask.copy()  # what upstream's sequence update does next
    return vals.view(B, L, width), indices.view(B, L, width), outputs.logprobs


def decode_block(seqs, L, width, rng):
    """Unmask each sequence's masked positions in a random order, 1-3 per step, until all are done.
    Returns per sequence the (step, vals, indices) that unmasked each position, and the final output."""
    unmasked_by = [dict() for _ in seqs]
    sent = [None] * len(seqs)
    first = True
    while any((s.dllm_mask == MASKED).any() for s in seqs):
        new_masks = np.stack([s.dllm_mask.copy() for s in seqs])
        for b, s in enumerate(seqs):
            masked = np.flatnonzero(s.dllm_mask == MASKED).tolist()
            for p in rng.sample(masked, min(len(masked), rng.randint(1, 3))):
                new_masks[b, p] = UNMASKED
        vals, indices, out = step(seqs, new_masks, width, is_decoding=not first)
        first = False
        for b in range(len(seqs)):
            for p in np.flatnonzero(new_masks[b] == UNMASKED).tolist():
                unmasked_by[b].setdefault(p, (vals[b, p], indices[b, p]))  # the first step it shows unmasked
            rows = out.indices.view(len(seqs), L, -1)[b]
            if sent[b] is not None:
                continue
            if (new_masks[b] == UNMASKED).all():
                sent[b] = (out.vals.view(len(seqs), L, -1)[b], rows)
                seqs[b].status = MessageStatus.STOPPED  # done: later steps of the others leave it alone
            elif seqs[b].sampling_param.num_logprobs > 0:
                assert (rows == -1).all(), 'nothing is sent while the block is incomplete'
    return unmasked_by, sent


def test_each_token_gets_the_logprob_of_the_step_that_unmasked_it():
    rng = random.Random()
    L, width = random.choice([4, 8, 16]), random.randint(1, 4)
    prompts = [rng.randint(0, L - 1) for _ in range(3)]
    seqs = [make_seq(L, prompts[0], 2), make_seq(L, prompts[1], 0), make_seq(L, prompts[2], 3)]
    before = [s.dllm_mask.copy() for s in seqs]
    unmasked_by, sent = decode_block(seqs, L, width, rng)
    for b in (0, 2):
        vals, indices = sent[b]
        for p in range(L):
            if before[b][p] == UNMASKED:  # the prompt's part of the block is never sent
                assert indices[p, 0] == -1
            else:
                want_vals, want_indices = unmasked_by[b][p]
                assert torch.equal(vals[p], want_vals) and torch.equal(indices[p], want_indices)
    # a request without logprobs keeps upstream's rows (upstream sends it none)
    assert sent[1] is not None


def test_upstream_would_send_the_sampled_ids_of_every_position():
    """The defect: the step completing a block carries that step's sampled ids at every position."""
    L = 4
    seq = make_seq(L, 0, 1)
    step([seq], np.array([[UNMASKED, MASKED, MASKED, MASKED]], dtype=np.uint8), 2, is_decoding=False)
    vals, indices, out = step([seq], np.full((1, L), UNMASKED, dtype=np.uint8), 2, is_decoding=True)
    # position 0 was unmasked by the first step: its row must not be this step's
    assert not torch.equal(out.indices[0], indices[0, 0])
    assert torch.equal(out.indices[1:], indices[0, 1:])


def test_a_stop_sends_the_record_and_a_preempted_block_keeps_its_rows():
    L = 8
    seq = make_seq(L, 2, 1)
    new = seq.dllm_mask.copy()
    new[2:5] = UNMASKED
    vals, indices, _ = step([seq], new[None], 2, is_decoding=True)
    new2 = seq.dllm_mask.copy()
    new2[5] = UNMASKED
    vals2, indices2, out = step([seq], new2[None], 2, is_decoding=True, stopped=[True])
    assert torch.equal(out.indices[2:5], indices[0, 2:5]) and torch.equal(out.indices[5], indices2[0, 5])
    assert (out.indices[[0, 1, 6, 7], 0] == -1).all()
    # preempted mid-block, the request is prefilled again with its half-decoded block: rows stay
    seq = make_seq(L, 0, 1)
    half = seq.dllm_mask.copy()
    half[:3] = UNMASKED
    _, first, _ = step([seq], half[None], 2, is_decoding=True)
    _, again, out = step([seq], np.full((1, L), UNMASKED, dtype=np.uint8), 2, is_decoding=False)
    assert torch.equal(out.indices[:3], first[0, :3]) and torch.equal(out.indices[3:], again[0, 3:])


def test_a_new_turn_starts_without_the_aborted_blocks_rows():
    from lmdeploy.pytorch.messages import SamplingParam, SchedulerSession, SequenceMeta
    from lmdeploy_focus.strategies.dllm.block_logprobs import RECORD_ATTR
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMSequenceStrategy
    L = 4
    strategy = FixedDLLMSequenceStrategy(L, 99)
    session = SchedulerSession(0, SequenceMeta(block_size=64, strategy=strategy), lifecycle=None)
    seq = strategy.make_sequence(1, session, SamplingParam(max_new_tokens=8, num_logprobs=1))
    seq.update_token_ids(np.arange(10, 16))
    setattr(seq, RECORD_ATTR, ('rows of a block', 'that was aborted'))
    seq.update_token_ids(np.arange(20, 23))  # the session's next turn
    assert getattr(seq, RECORD_ATTR) is None


def test_a_wider_later_step_keeps_the_earlier_rows():
    L = 4
    seq = make_seq(L, 0, 1)
    m = seq.dllm_mask.copy()
    m[0] = UNMASKED
    _, narrow, _ = step([seq], m[None], 2, is_decoding=True)
    _, wide, out = step([seq], np.full((1, L), UNMASKED, dtype=np.uint8), 5, is_decoding=True)
    assert out.indices.shape == (L, 5)
    assert torch.equal(out.indices[0, :2], narrow[0, 0]) and torch.equal(out.indices[1:], wide[0, 1:])


def test_an_unknown_layout_sends_no_logprobs_instead_of_failing_the_loop():
    seq = make_seq(4, 0, 1)
    outputs = SimpleNamespace(logprobs=BatchedLogProbs(vals=torch.zeros(3, 2), indices=torch.zeros(3, 2)),
                              extra_outputs=SimpleNamespace(dllm_mask=torch.zeros(4, dtype=torch.uint8)),
                              stopped=torch.tensor([False]))
    emit_block_logprobs(outputs, [seq], None, 4)
    assert outputs.logprobs is None


# ---- through upstream's output path: real sequences, the plugin's stop criteria, upstream's
# ---- _make_infer_outputs (with patch 7), preemption mid-block ---------------------------------------


def _serve_one_request(rng, evict_at=None):
    """Decode one request block by block with random unmasking orders and sampled ids, feeding every step
    through upstream's ``EngineLoop._make_infer_outputs``; returns the tokens and logprob entries the
    request was sent."""
    from lmdeploy.pytorch.config import DLLMConfig
    from lmdeploy.pytorch.engine import engine_loop
    from lmdeploy.pytorch.engine.model_agent.agent import BatchedOutputs
    from lmdeploy.pytorch.messages import SamplingParam, SchedulerSession, SequenceMeta, UpdateTokenMode
    from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs, DLLMExtraOutputs
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMModelAgentStrategy, FixedDLLMSequenceStrategy
    CACHED, MASK_TOKEN, STOP = consts.DLLM_CACHED, 999, 7
    L, P, N = rng.choice([4, 8]), rng.randint(1, 20), rng.randint(1, 20)
    stop_words = torch.tensor([[STOP]]).repeat(L, 1) if rng.random() < 0.5 else None
    strategy = FixedDLLMSequenceStrategy(L, MASK_TOKEN)
    session = SchedulerSession(0, SequenceMeta(block_size=16, strategy=strategy), lifecycle=None)
    seq = strategy.make_sequence(seq_id=0, session=session,
                                 sampling_param=SamplingParam(max_new_tokens=N, num_logprobs=2))

    class Running:  # the scheduler's state machine, reduced to what the output path reads
        status = MessageStatus.RUNNING

        def finish(self):
            self.status = MessageStatus.STOPPED

    seq.set_state(Running())
    seq.update_token_ids(torch.tensor([rng.randint(10, 50) for _ in range(P)]), mode=UpdateTokenMode.INPUTS)
    seq.resp = SimpleNamespace(_input_logprobs=None, data=None, is_done=False)
    agent = FixedDLLMModelAgentStrategy(DLLMConfig(block_length=L), MASK_TOKEN)
    loop = SimpleNamespace(seq_strategy=strategy, scheduler=SimpleNamespace(cache_routed_experts=lambda running: None),
                           config=SimpleNamespace(num_speculative_tokens=None, enable_metrics=False))
    prefill, criteria, sent_logprobs, tokens = True, None, [], []
    for step_index in range(200):
        if prefill:
            criteria = agent.make_stopping_criteria([seq])
        history = seq.num_all_ids - L if prefill else seq.num_history_ids
        block_ids = np.array(seq.history_cache[seq.num_all_ids - L:seq.num_all_ids])
        old = np.array(seq.dllm_mask[-L:])
        new = old.copy()
        if (old == UNMASKED).all():
            new[:] = CACHED  # the step after completion commits the block
        masked = np.flatnonzero(old == MASKED).tolist()
        for p in rng.sample(masked, min(len(masked), rng.randint(1, 3))):
            new[p] = UNMASKED
        sampled = torch.tensor([rng.choice([STOP, 11, 12, 13]) for _ in range(L)])
        next_ids = torch.where(torch.from_numpy(old != MASKED), torch.from_numpy(block_ids.astype(np.int64)), sampled)
        vals = torch.randn(L, 3).to(torch.bfloat16)
        indices = torch.cat([sampled[:, None], torch.randint(0, 5, (L, 2))], 1).to(torch.int32)
        inputs = SimpleNamespace(history_lengths=torch.tensor([history]), seq_length=torch.tensor([L]))
        stopped, stop_pos, criteria = criteria.step(next_ids.clone(), stop_words, inputs=inputs,
                                                    extra_inputs=DLLMExtraInputs(dllm_mask=torch.from_numpy(new)))
        outputs = BatchedOutputs(next_token_ids=next_ids.clone(), stopped=stopped, stop_pos=stop_pos,
                                 logprobs=BatchedLogProbs(vals=vals, indices=indices), model_metas=None,
                                 extra_outputs=DLLMExtraOutputs(dllm_mask=torch.from_numpy(new.copy())))
        model_inputs = SimpleNamespace(is_decoding=False, logits_indices=None, is_chunk=False,
                                       is_last_chunk=True) if prefill else None
        sent = engine_loop.EngineLoop._make_infer_outputs(loop, outputs, [seq], model_inputs,
                                                          SimpleNamespace(is_decoding=True))
        prefill = False
        for out in sent.values():
            if out.logprobs is not None:
                sent_logprobs.extend(dict(zip(i, v)) for v, i in out.logprobs)
            tokens = list(out.token_ids)
            seq.resp.data = dict(token_ids=tokens)
        if seq.status != MessageStatus.RUNNING:
            break
        if step_index == evict_at:
            seq.set_step(0)  # preempted (KV cache short): prefilled again with its half-decoded block
            prefill = True
    return tokens, sent_logprobs


def test_upstreams_output_path_sends_one_entry_per_token_naming_it():
    seed = random.randrange(2**31)
    for case in range(60):
        rng = random.Random(seed + case)
        evict_at = None if case % 3 == 0 else rng.choice([0, 1, 2, 3, 5])
        tokens, sent = _serve_one_request(rng, evict_at)
        assert tokens, f'seed {seed + case}'
        assert len(sent) == len(tokens), f'seed {seed + case}: {len(sent)} entries for {len(tokens)} tokens'
        assert all(list(entry)[0] == token for token, entry in zip(tokens, sent)), f'seed {seed + case}'
