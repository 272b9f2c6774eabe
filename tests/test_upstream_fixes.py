"""Fixes of LMDeploy 0.18 DLLM defects that disturb other requests or cut outputs wrongly
(strategies/dllm/upstream_fixes/): each test shows upstream's behaviour going wrong on the same input,
then ours."""
from types import SimpleNamespace

import pytest
import torch

from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMModelAgentStrategy, DLLMStoppingCriteria
from lmdeploy_focus.strategies.dllm.upstream_fixes import (PER_REQUEST_VECTORS, FixedDLLMSamplingStrategy,
                                                          FixedDLLMModelAgentStrategy, PaddingSafeDLLMStoppingCriteria)

L = 4


def _stop_step(criteria_cls, stop_rows, tokens):
    """Two sequences in their first block; the first two slots of each block are the prompt's
    (ignored by the stop check); every slot unmasked this step."""
    B = len(stop_rows)
    width = max(len(r) for r in stop_rows)
    table = torch.full((B, width), -1, dtype=torch.long)  # upstream's padding
    for b, row in enumerate(stop_rows):
        table[b, :len(row)] = torch.tensor(row)
    stop_words = table[:, None].repeat(1, L, 1).flatten(0, 1)  # per token, as DLLM sampling inputs
    criteria = criteria_cls(num_appendable_ids=torch.full((B, ), 100), output_start_pos=torch.full((B, ), 2))
    inputs = SimpleNamespace(history_lengths=torch.zeros(B, dtype=torch.long), seq_length=torch.full((B, ), L))
    extra = SimpleNamespace(dllm_mask=torch.full((B * L, ), consts.DLLM_UNMASKED, dtype=torch.uint8))
    return criteria.step(torch.tensor(tokens), stop_words, inputs=inputs, extra_inputs=extra)


@pytest.mark.parametrize('seed', range(3))
def test_fewer_stop_words_than_the_batch_neighbour_do_not_stop_a_request(seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, 50, (2 * L, ), generator=gen).tolist()
    stop_rows = [[5, 6, 7], [5, 6]]  # the second row gets one padding entry
    upstream_stopped, _, _ = _stop_step(DLLMStoppingCriteria, stop_rows, tokens)
    assert upstream_stopped.tolist() == [False, True]  # the defect: padding matches an ignored slot
    stopped, _, criteria = _stop_step(PaddingSafeDLLMStoppingCriteria, stop_rows, tokens)
    assert stopped.tolist() == [False, False]
    assert isinstance(criteria, PaddingSafeDLLMStoppingCriteria)


def test_real_stop_words_still_stop_at_their_position():
    tokens = [11, 12, 13, 7, 21, 22, 6, 23]  # seq 0 stop word 7 at slot 3; seq 1 stop word 6 at slot 2
    stopped, stop_pos, _ = _stop_step(PaddingSafeDLLMStoppingCriteria, [[5, 6, 7], [6]], tokens)
    assert stopped.tolist() == [True, True] and stop_pos.tolist() == [3, 2]
    tokens = [7, 12, 13, 14, 21, 22, 23, 24]  # stop word only in the ignored prompt slot
    stopped, _, _ = _stop_step(PaddingSafeDLLMStoppingCriteria, [[7], [7, 8]], tokens)
    assert stopped.tolist() == [False, False]


def test_criteria_keep_their_class_through_clone_merge_update():
    c = PaddingSafeDLLMStoppingCriteria(num_appendable_ids=torch.tensor([3, 4]), output_start_pos=torch.tensor([0, 1]))
    merged = c.clone().merge(c)
    assert isinstance(merged, PaddingSafeDLLMStoppingCriteria) and merged.num_appendable_ids.tolist() == [3, 4, 3, 4]
    updated = merged.update(SimpleNamespace(indices=torch.tensor([3])))
    assert isinstance(updated, PaddingSafeDLLMStoppingCriteria) and updated.output_start_pos.tolist() == [1]
    assert isinstance(c.to_device('cpu'), PaddingSafeDLLMStoppingCriteria)


def _agent(cls):
    config = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_STATIC,
                        denoising_steps=L, confidence_threshold=0.9)
    return cls(dllm_config=config, dllm_mask_token=99)


def test_an_inference_mode_mask_outside_inference_mode_is_unmasked():
    """The last prefill chunk's mask as upstream's engine hands it over (made in inference mode)."""
    with torch.inference_mode():
        mask = torch.full((L, ), consts.DLLM_MASKED, dtype=torch.uint8)
        mask[:2] = consts.DLLM_UNMASKED
    logits = torch.randn(L, 100)
    inputs = SimpleNamespace(input_ids=torch.tensor([[1, 2, 99, 99]]), seq_length=torch.tensor([L]))
    with pytest.raises(RuntimeError, match='Inplace update to inference tensor'):
        _agent(DLLMModelAgentStrategy).post_sampling(inputs, logits, logits.argmax(-1),
                                                     SimpleNamespace(dllm_mask=mask))
    extra = SimpleNamespace(dllm_mask=mask)
    next_ids, extra = _agent(FixedDLLMModelAgentStrategy).post_sampling(inputs, logits, logits.argmax(-1), extra)
    assert (extra.dllm_mask != consts.DLLM_MASKED).sum() == 3  # static: one more token this step
    assert isinstance(_agent(FixedDLLMModelAgentStrategy).make_stopping_criteria(
        [SimpleNamespace(sampling_param=SimpleNamespace(max_new_tokens=8), num_new_tokens=0, num_valid_ids=6,
                         output_start_pos=6)]), PaddingSafeDLLMStoppingCriteria)


def test_an_inference_mode_counter_outside_inference_mode_is_stepped():
    """The remaining-token counter as it comes out of a prefill chunk (made in inference mode)."""
    def fresh_counter():
        with torch.inference_mode():
            return torch.full((2, ), 100)

    tokens = list(range(20, 20 + 2 * L))
    rows = [[5], [5]]
    with pytest.raises(RuntimeError, match='Inplace update to inference tensor'):
        _stop_step(lambda **kw: DLLMStoppingCriteria(**{**kw, 'num_appendable_ids': fresh_counter()}), rows, tokens)
    counter = fresh_counter()
    stopped, _, criteria = _stop_step(
        lambda **kw: PaddingSafeDLLMStoppingCriteria(**{**kw, 'num_appendable_ids': counter}), rows, tokens)
    assert stopped.tolist() == [False, False] and criteria.num_appendable_ids.tolist() == [100 - L] * 2
    assert counter.tolist() == [100, 100]


def test_an_inference_mode_random_offset_outside_inference_mode_is_advanced():
    """Chunked prefill's last chunk hands ``merge_prefill`` a sampling delta made in inference mode;
    upstream's ``random_offsets += 1`` then raised with inference mode off (H100, stock chunked prefill)."""
    from lmdeploy.pytorch.engine.logits_process import SamplingInputsDelta
    from lmdeploy.pytorch.model_inputs import ModelInputs
    from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraOutputs
    from lmdeploy.pytorch.strategies.dllm.step_inputs import DLLMStepInputs
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMStepInputs
    B = 2
    offsets = torch.randint(0, 1000, (B * L, ))

    def prefill_output():
        with torch.inference_mode():
            delta = SamplingInputsDelta(num_ignore_eos=torch.zeros(B * L, dtype=torch.long),
                                        random_offsets=offsets.clone())
        inputs = ModelInputs(input_ids=torch.randint(0, 50, (1, B * 6)), seq_length=torch.full((B, ), 6),
                             history_lengths=torch.zeros(B, dtype=torch.long), block_offsets=torch.zeros(B, 4),
                             is_decoding=False, num_ignored_history=torch.zeros(B, dtype=torch.long),
                             max_q_seqlen=6, max_kv_seqlen=6, sum_kv_seqlen=B * 6)
        mask = torch.full((B * L, ), consts.DLLM_MASKED, dtype=torch.uint8)
        criteria = PaddingSafeDLLMStoppingCriteria(num_appendable_ids=torch.full((B, ), 9),
                                                   output_start_pos=torch.full((B, ), 6))
        return (inputs, None, criteria, delta, torch.randint(0, 50, (B * L, )), None,
                DLLMExtraOutputs(dllm_mask=mask))

    with pytest.raises(RuntimeError, match='Inplace update to inference tensor'):
        DLLMStepInputs(_block_size=L, _dllm_mask_token=99).merge_prefill(*prefill_output())
    step_inputs = FixedDLLMStepInputs(_block_size=L, _dllm_mask_token=99)
    args = prefill_output()
    step_inputs.merge_prefill(*args)
    assert torch.equal(step_inputs.sampling_delta.random_offsets, offsets + 1)
    assert torch.equal(args[3].random_offsets, offsets)  # the inference tensor itself is left alone
    step_inputs.step_decode(step_inputs.model_inputs, step_inputs.extra_inputs, step_inputs.stopping_criteria,
                            *prefill_output()[3:])
    assert torch.equal(step_inputs.sampling_delta.random_offsets, offsets + 1)


# ---- per-request sampling parameters in a mixed batch ---------------------------------------------------


def _sampling_seqs(num_seqs: int, gen: torch.Generator, generated: int = 0) -> list:
    """Sequences whose every per-request sampling parameter differs (random values, fresh each run), each with
    ``generated`` tokens out (``num_ignore_eos`` = 3 + i before the per-position offsets)."""
    import numpy as np
    from lmdeploy.messages import GenerationConfig
    from lmdeploy.pytorch.messages import SamplingParam
    seqs = []
    for i in range(num_seqs):
        u = torch.rand(6, generator=gen).tolist()
        config = GenerationConfig(temperature=0.1 + 0.3 * i + 0.2 * u[0], top_k=1 + i * 7, top_p=0.5 + 0.4 * u[1],
                                  min_p=0.01 + 0.1 * u[2], repetition_penalty=1.05 + 0.1 * i + 0.05 * u[3],
                                  random_seed=int(u[4] * 1e6) + i, min_new_tokens=3 + i + generated,
                                  repetition_ngram_size=2 + i, repetition_ngram_threshold=3 + i)
        valid = 10 + 3 * i + generated
        seqs.append(SimpleNamespace(sampling_param=SamplingParam.from_gen_config(config), num_valid_ids=valid,
                                    session=SimpleNamespace(session_id=i), seq_id=i, num_new_tokens=generated,
                                    generated_ids=torch.randint(0, 200, (generated, ), generator=gen).numpy(),
                                    valid_ids=np.arange(valid)))
    return seqs


def _per_request(inputs, name: str, num_seqs: int, block: int):
    return getattr(inputs, name).view(num_seqs, block)


@pytest.mark.parametrize('num_seqs, block', [(2, 4), (3, 32), (5, 16)])
def test_each_request_gets_its_own_sampling_parameters_on_its_block_rows(num_seqs, block):
    from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    seqs = _sampling_seqs(num_seqs, gen, generated=8)  # enough own tokens for every n-gram size (own_history)
    upstream = DLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    ours = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    # min_new_tokens counts per position (test_own_history): add back the output tokens before each slot
    first = torch.tensor([s.num_valid_ids % block for s in seqs])[:, None]
    ours.num_ignore_eos = (ours.num_ignore_eos.view(num_seqs, block) + (torch.arange(block) - first)
                           ).reshape(-1)
    checked = []
    for name in PER_REQUEST_VECTORS:
        vector = getattr(ours, name)
        if vector is None:
            continue
        checked.append(name)
        if name == 'random_seeds':  # one stream per position (test below); position 0 is the request's seed
            rows = _per_request(ours, name, num_seqs, block)[:, :1].expand(-1, block)
            up = _per_request(upstream, name, num_seqs, block)
            assert not (up == up[:, :1]).all(), name
            assert torch.equal(getattr(upstream, name).view(block, num_seqs).t(), rows), name
            continue
        rows = _per_request(ours, name, num_seqs, block)
        # every row of request b holds request b's value: the request's own, distinct from the others'
        assert (rows == rows[:, :1]).all(), name
        assert rows[:, 0].unique().numel() == num_seqs, name
        # upstream's layout differs: the defect (row b*L+p gets request (b*L+p) mod B)
        up = _per_request(upstream, name, num_seqs, block)
        assert not (up == up[:, :1]).all(), name
        assert torch.equal(getattr(upstream, name).view(block, num_seqs).t(), rows), name
    assert {'temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'random_seeds', 'random_offsets',
            'num_ignore_eos', 'repetition_ngram_size', 'repetition_ngram_threshold'} <= set(checked)
    # per request, in request order, matching the request's own parameters
    temps = _per_request(ours, 'temperature', num_seqs, block)[:, 0]
    assert torch.allclose(temps, torch.tensor([s.sampling_param.temperature for s in seqs]))
    assert _per_request(ours, 'num_ignore_eos', num_seqs, block)[:, 0].tolist() == [3 + i for i in range(num_seqs)]
    # the 2-D tables and the rest are upstream's
    assert ours.batch_size == upstream.batch_size == num_seqs * block


@pytest.mark.parametrize('num_seqs, block', [(1, 32), (3, 16)])
def test_every_block_position_draws_from_its_own_random_stream(num_seqs, block):
    """The sampler draws row r's uniform from (seed[r], offset[r]) (Philox, ``tl.rand``); upstream gave
    all rows of a request the same pair, so the whole block drew one number per step. Ours: no pair
    repeats within a request over a block's worth of steps (upstream adds 1 to every offset per step)."""
    from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    seqs = _sampling_seqs(num_seqs, gen)
    seqs[0].sampling_param.top_k = 40  # not all greedy: seeds are made
    agent = DLLMModelAgentStrategy(dllm_config=DLLMConfig(block_length=block), dllm_mask_token=0)
    mask = SimpleNamespace(dllm_mask=torch.full((num_seqs * block, ), consts.DLLM_MASKED, dtype=torch.uint8))
    for strategy, distinct in ((DLLMSamplingStrategy, False), (FixedDLLMSamplingStrategy, True)):
        inputs = strategy(0, block).make_sampling_inputs(seqs)
        pairs = [set() for _ in range(num_seqs)]
        for _ in range(block):
            seeds = inputs.random_seeds.view(num_seqs, block) if distinct else \
                inputs.random_seeds.view(block, num_seqs).t()  # upstream's own (position-major) layout
            offsets = inputs.random_offsets.view(num_seqs, block) if distinct else \
                inputs.random_offsets.view(block, num_seqs).t()
            for b in range(num_seqs):
                pairs[b].update(zip(seeds[b].tolist(), offsets[b].tolist()))
            inputs = agent.step_sampling_inputs(inputs, None, mask)
        sizes = [len(p) for p in pairs]
        assert sizes == ([block * block] * num_seqs if distinct else [block] * num_seqs), strategy.__name__
    ours = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    assert ours.random_seeds.view(num_seqs, block)[:, 0].tolist() == [
        s.sampling_param.random_seed & 0xffffffff for s in seqs]
    assert int(ours.random_seeds.max()) <= 0xffffffff and int(ours.random_seeds.min()) >= 0


def test_upstream_step_update_reads_the_rows_request_major():
    """The agent's per-step update (``num_ignore_eos`` per finished block) views the vector [B, L]:
    with our layout a request that completed its block moves on by L, the other does not."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    block, seqs = 4, _sampling_seqs(2, gen)
    ours = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    agent = DLLMModelAgentStrategy(dllm_config=DLLMConfig(block_length=block), dllm_mask_token=0)
    mask = torch.tensor([consts.DLLM_UNMASKED] * block + [consts.DLLM_MASKED] * block, dtype=torch.uint8)
    stepped = agent.step_sampling_inputs(ours, None, SimpleNamespace(dllm_mask=mask))
    # request b's slot p: min_new_tokens - tokens out - output slots before p (test_own_history), less L for the
    # request whose block completed
    expected = [[s.sampling_param.min_new_tokens - s.num_new_tokens - (p - s.num_valid_ids % block) - done
                 for p in range(block)] for s, done in zip(seqs, (block, 0))]
    assert stepped.num_ignore_eos.view(2, block).tolist() == expected


def test_mixed_batch_temperatures_reach_their_own_rows_in_the_logits_processor():
    """Through upstream's logits processor: every row of a request is divided by that request's temperature."""
    import asyncio

    from lmdeploy.pytorch.engine.logits_process import FusedLogitsProcessor
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    block, num_seqs, vocab = 8, 3, 50
    seqs = _sampling_seqs(num_seqs, gen)
    for s in seqs:  # only the temperature acts on the scores here
        s.sampling_param.repetition_penalty, s.sampling_param.repetition_ngram_size = 1.0, 0
        s.sampling_param.min_new_tokens = 0
    inputs = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    logits = torch.randn(num_seqs * block, vocab, generator=gen)
    scores, _ = asyncio.run(FusedLogitsProcessor(inputs)(logits.clone()))
    temps = torch.tensor([s.sampling_param.temperature for s in seqs]).repeat_interleave(block)
    torch.testing.assert_close(scores, logits / temps[:, None])


# ---- where an output ends ---------------------------------------------------------------------------------


def _first_block_step(fixed: bool, prompt_len: int, block: list, stop_word: int):
    """A fresh request of ``prompt_len`` tokens whose first block (prompt tail + output) decodes to ``block``;
    upstream's sequence + criteria, or the plugin's."""
    import numpy as np
    from lmdeploy.pytorch.messages import SchedulerSession, SequenceMeta
    from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy
    from lmdeploy.messages import GenerationConfig
    from lmdeploy.pytorch.messages import SamplingParam
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMSequenceStrategy
    strategy = (FixedDLLMSequenceStrategy if fixed else DLLMSequenceStrategy)(L, 99)
    session = SchedulerSession(0, SequenceMeta(block_size=16, strategy=strategy), lifecycle=None)
    param = SamplingParam.from_gen_config(GenerationConfig(max_new_tokens=64, stop_token_ids=[stop_word]))
    seq = strategy.make_sequence(seq_id=0, session=session, sampling_param=param)
    seq.update_token_ids(np.arange(10, 10 + prompt_len))
    criteria = _agent(FixedDLLMModelAgentStrategy if fixed else DLLMModelAgentStrategy).make_stopping_criteria([seq])
    start = (prompt_len // L) * L
    inputs = SimpleNamespace(history_lengths=torch.tensor([start]), seq_length=torch.tensor([L]))
    extra = SimpleNamespace(dllm_mask=torch.full((L, ), consts.DLLM_UNMASKED, dtype=torch.uint8))
    stopped, stop_pos, _ = criteria.step(torch.tensor(block), torch.tensor([[stop_word]] * L), inputs=inputs,
                                         extra_inputs=extra)
    return bool(stopped[0]), int(stop_pos[0])


def test_a_stop_word_right_after_the_prompt_ends_the_output():
    # prompt of 6 tokens, L 4: the block holding the prompt's end is [p4, p5, out0, out1]
    block = [14, 15, 21, 7]  # EOS (7) as the second output token
    assert _first_block_step(False, 6, block, 7) == (False, 0)  # upstream: not checked
    assert _first_block_step(True, 6, block, 7) == (True, 3)
    # the prompt's own tokens in that block are still not checked
    assert _first_block_step(True, 6, [7, 15, 21, 22], 7)[0] is False
    assert _first_block_step(True, 6, [14, 7, 21, 22], 7)[0] is False


@pytest.mark.parametrize('eos_at', [0, 1, 2])
def test_a_stop_word_before_the_length_limit_of_its_block_ends_the_output_there(eos_at):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    tokens = torch.randint(10, 50, (L, ), generator=gen)
    tokens[eos_at] = 7
    inputs = SimpleNamespace(history_lengths=torch.tensor([8]), seq_length=torch.tensor([L]))
    extra = SimpleNamespace(dllm_mask=torch.full((L, ), consts.DLLM_UNMASKED, dtype=torch.uint8))
    results = {}
    for cls in (DLLMStoppingCriteria, PaddingSafeDLLMStoppingCriteria):
        # 3 tokens left: the length limit ends the output at block position 2
        criteria = cls(num_appendable_ids=torch.tensor([3]), output_start_pos=torch.tensor([0]))
        stopped, stop_pos, _ = criteria.step(tokens.clone(), torch.tensor([[7]] * L), inputs=inputs,
                                             extra_inputs=extra)
        results[cls] = (bool(stopped[0]), int(stop_pos[0]))
    assert results[DLLMStoppingCriteria] == (True, 2)  # upstream: the length position wins
    assert results[PaddingSafeDLLMStoppingCriteria] == (True, eos_at)


def test_a_requests_logits_processor_acts_on_its_own_block_rows():
    """Request 1 bans a token through a custom logits processor: its L rows lose the token, no other row
    does (upstream applied it to row 1, a position of request 0)."""
    # the logits processor's own step for custom processors (its __call__ first waits on a CUDA stream)
    from lmdeploy.pytorch.engine.logits_process import _apply_custom_logits_processors
    from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    block, num_seqs, vocab = 4, 3, 30
    banned = int(torch.randint(0, vocab, (1, ), generator=gen))

    def ban(ids, logits):
        logits = logits.clone()
        logits[banned] = float('-inf')
        return logits

    seqs = _sampling_seqs(num_seqs, gen)
    for i, s in enumerate(seqs):
        p = s.sampling_param
        p.repetition_penalty, p.repetition_ngram_size, p.min_new_tokens, p.temperature = 1.0, 0, 0, 1.0
        p.logits_processors = [ban] if i == 1 else None
    for strategy, rows in ((DLLMSamplingStrategy, {1}), (FixedDLLMSamplingStrategy, set(range(block, 2 * block)))):
        inputs = strategy(0, block).make_sampling_inputs(seqs)
        logits = torch.randn(num_seqs * block, vocab, generator=gen)
        assert inputs.all_ids is not None and inputs.all_ids.size(0) == num_seqs * block
        scores = _apply_custom_logits_processors(inputs.logits_processors, inputs.all_ids, logits.clone())
        assert set(torch.isinf(scores[:, banned]).nonzero().flatten().tolist()) == rows, strategy.__name__


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_logit_bias_runs_as_one_op_per_row_with_upstreams_exact_logits(dtype):
    """Upstream's logit_bias processor (one indexing op per entry, on every block row of a diffusion request) and
    its one-op replacement give the same logits (fp32; bf16 / fp16 within one unit in the last place, where
    upstream's scalar add rounds the bias first on the CPU); the sampling fix hands out the replacement, once per
    request, and leaves other processors alone."""
    from lmdeploy.pytorch.engine.logits_process import _apply_custom_logits_processors
    from lmdeploy.serve.openai.chat_completions.logits_processors import logit_bias_logits_processor

    from lmdeploy_focus.strategies.dllm.upstream_fixes.logit_bias import TensorLogitBias
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    block, num_seqs, vocab = 4, 3, 50
    ids = torch.randperm(vocab, generator=gen)[:20].tolist()
    bias = {str(i): float(b) for i, b in zip(ids, torch.empty(20).uniform_(-150, 150, generator=gen))}
    upstream = logit_bias_logits_processor(bias, SimpleNamespace(vocab_size=vocab))

    def other(token_ids, logits):
        return logits * 2

    seqs = _sampling_seqs(num_seqs, gen)
    for i, s in enumerate(seqs):
        p = s.sampling_param
        p.repetition_penalty, p.repetition_ngram_size, p.min_new_tokens, p.temperature = 1.0, 0, 0, 1.0
        p.logits_processors = [upstream, other] if i == 1 else None
    inputs = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)
    # each row: one guard (processor_guard) running the request's processors in order
    rows = [guards[0].processors for guards in inputs.logits_processors[block:2 * block]]
    assert all(isinstance(r[0], TensorLogitBias) and r[1] is other for r in rows)
    assert len({id(r[0]) for r in rows}) == 1  # made once for the request
    again = FixedDLLMSamplingStrategy(0, block).make_sampling_inputs(seqs)  # the next step's inputs
    assert again.logits_processors[block][0].processors[0] is rows[0][0]
    logits = (torch.randn(num_seqs * block, vocab, generator=gen) * 30).to(dtype)
    ours = _apply_custom_logits_processors(inputs.logits_processors, inputs.all_ids, logits.clone())
    expected = logits.clone()
    for row in range(block, 2 * block):
        expected[row] = other(None, upstream(None, expected[row]))
    if dtype == torch.float32:
        assert torch.equal(ours, expected)
    else:  # ours: the fp32 sum rounded once; upstream on the CPU also rounds the bias to the dtype first
        dense = torch.zeros(vocab)
        dense[[int(i) for i in bias]] = torch.tensor(list(bias.values())).clamp(-100, 100)
        fp32_sum = (logits[block:2 * block].float() + dense).to(dtype) * 2  # then `other` doubles it
        assert torch.equal(ours[block:2 * block], fp32_sum)
        rounding = torch.finfo(dtype).eps * (dense.abs() * 2 + expected[block:2 * block].float().abs())
        assert ((ours[block:2 * block].float() - expected[block:2 * block].float()).abs() <= rounding).all()
    assert torch.equal(ours[:block], logits[:block]) and torch.equal(ours[2 * block:], logits[2 * block:])


def test_response_format_is_dropped_instead_of_failing_the_batch(caplog):
    from lmdeploy.pytorch.engine.guided_process import GuidedDecodingManager
    from lmdeploy.pytorch.strategies.dllm.sampling import DLLMSamplingStrategy
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    seqs = _sampling_seqs(2, gen)
    seqs[1].sampling_param.response_format = {'type': 'json_object'}
    lookup = SimpleNamespace(get_processor=lambda session_id, seq_id, fmt: ('matcher', session_id))
    upstream = DLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    with pytest.raises(IndexError):  # upstream: per-row formats, per-request sessions
        GuidedDecodingManager.get_processors(lookup, upstream.session_ctx, upstream.response_formats)
    with caplog.at_level('WARNING'):
        ours = FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    assert ours.response_formats == (None, ) * (2 * L)
    assert GuidedDecodingManager.get_processors(lookup, ours.session_ctx, ours.response_formats) == {}
    assert 'response_format is not supported' in caplog.text and '[1]' in caplog.text


# ---- a session's next turn after an abort -------------------------------------------------------------------


@pytest.mark.parametrize('fixed', [False, True])
def test_next_turn_after_an_abort_at_a_commit_feeds_the_new_prompt(fixed):
    import numpy as np
    from lmdeploy.pytorch.messages import SamplingParam, SchedulerSession, SequenceMeta, UpdateTokenMode
    from lmdeploy.pytorch.strategies.dllm.sequence import DLLMSequenceStrategy
    from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMSequenceStrategy
    U, C, M = consts.DLLM_UNMASKED, consts.DLLM_CACHED, consts.DLLM_MASKED
    strategy = (FixedDLLMSequenceStrategy if fixed else DLLMSequenceStrategy)(L, 99)
    session = SchedulerSession(0, SequenceMeta(block_size=64, strategy=strategy), lifecycle=None)
    seq = strategy.make_sequence(1, session, SamplingParam(max_new_tokens=64))
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    prompt, first, second = (torch.randint(10, 90, (n, ), generator=gen).numpy() for n in (2 * L, L, 3))
    seq.update_token_ids(prompt)
    seq.update_token_ids(prompt[-L:], dllm_mask=np.full(L, C, np.uint8), mode=UpdateTokenMode.PREFILL)
    seq.update_token_ids(first, dllm_mask=np.full(L, U, np.uint8), mode=UpdateTokenMode.DECODE)
    seq.update_token_ids(first, dllm_mask=np.full(L, C, np.uint8), mode=UpdateTokenMode.DECODE)  # commit
    half = np.array([7] + [99] * (L - 1))  # a token decoded out of order, then the abort
    seq.update_token_ids(half, dllm_mask=np.array([U] + [M] * (L - 1), np.uint8), mode=UpdateTokenMode.DECODE)
    seq.update_token_ids(second)  # the session's next turn
    fed = seq.token_ids.tolist()
    expected = second.tolist() + [99] * (L - len(second))
    assert (fed == expected) == fixed, fed
    if fixed:
        assert seq.num_history_ids == 3 * L and seq.num_valid_ids == 3 * L + len(second)
        assert seq.history_cache[:3 * L].tolist() == prompt.tolist() + first.tolist()
        from lmdeploy.pytorch.strategies.dllm.sequence import SchedulerSequenceDLLM
        from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedSchedulerSequenceDLLM
        assert type(seq) is FixedSchedulerSequenceDLLM and isinstance(seq, SchedulerSequenceDLLM)


def test_logprobs_reach_the_sampler_and_unsupported_options_warn_once_per_request(caplog):
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1, ))))
    seqs = _sampling_seqs(3, gen)
    for s in seqs:
        s.sampling_param.num_logprobs = -1
    assert FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs).max_num_logprobs == -1
    seqs[2].sampling_param.num_logprobs = 5  # sent per block by block_logprobs.py
    assert FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs).max_num_logprobs == 5
    seqs[2].sampling_param.response_format = {'type': 'json_object'}
    with caplog.at_level('WARNING'):
        FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    assert 'response_format is not supported' in caplog.text and '[2]' in caplog.text
    caplog.clear()
    with caplog.at_level('WARNING'):  # the next step of the same request: no new warning
        FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    assert 'response_format' not in caplog.text
    seqs[2].resp = object()  # the session's next request
    with caplog.at_level('WARNING'):
        FixedDLLMSamplingStrategy(0, L).make_sampling_inputs(seqs)
    assert 'response_format is not supported' in caplog.text
