"""CPU tests of the step recorder (``lmdeploy_focus_dev.testing.step_recorder``) and the step comparator
(``checks/equivalence``): synthetic runs through upstream's DLLM agent strategy with controlled
logits (identical, near-tie and clear flips, input divergence), the save/load round trip, and the
reference loop against itself, in fp32 against fp64, and replayed as an engine-format recording.
"""
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs, DLLMModelAgentStrategy

from lmdeploy_focus_dev.reference.dllm_decode import reference_generate
from lmdeploy_focus_dev.reference.sdar_model import SDARReference
from lmdeploy_focus_dev.testing.sdar_cpu import random_sdar_weights, tiny_sdar_hf_config
from lmdeploy_focus_dev.testing.step_recorder import (RECORD_ENV, StepRecorder, load_meta, load_steps, maybe_record_steps,
                                                  probe_ids)

CHECKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'checks')
sys.path.insert(0, CHECKS)
from equivalence.compare_steps import compare_recordings, compare_sequences  # noqa: E402
from equivalence.decisions import UnmaskRule  # noqa: E402
from equivalence.reference_mode import compare_to_reference_sequences  # noqa: E402
from equivalence.sequences import sequences_from_recording, sequences_from_reference  # noqa: E402

sys.path.remove(CHECKS)

MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED
L, VOCAB = 8, 64
MASK_ID = VOCAB - 1
STATIC = DLLMConfig(block_length=L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_STATIC, denoising_steps=4)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]
NOISE = 1e-5  # per-logit difference between the synthetic "runs"

# ---- synthetic runs through upstream's agent strategy ---------------------------------------------


def fake_inputs(rows: list[list[int]], history: list[int], is_decoding: bool, keys: list[int]):
    """The ``ModelInputs`` fields ``post_sampling`` and the recorder read."""
    return SimpleNamespace(input_ids=torch.tensor([t for r in rows for t in r])[None],
                           seq_length=torch.tensor([len(r) for r in rows]),
                           history_lengths=torch.tensor(history),
                           block_offsets=torch.tensor(keys)[:, None],
                           is_decoding=is_decoding,
                           is_dummy=False)


def base_logits(step: int, batch: int) -> torch.Tensor:
    """Flat random logits (confidences ~0.03) that depend on the step only."""
    return 0.5 * torch.randn(batch * L, VOCAB, generator=torch.Generator().manual_seed(1000 + step))


def simulate(directory, edit_logits=None, edit_inputs=None, noise_seed=None, stop_unmasked=False):
    """Prefill + one block of static decoding for PROMPTS through the recorder-wrapped strategy.

    A sequence leaves the batch after its commit step (as when it stops), so later steps have fewer
    rows. ``edit_logits(step, logits [B, L, V])`` / ``edit_inputs(step, blocks)`` inject
    differences; ``noise_seed`` adds uniform noise of NOISE to every logit (another "run");
    ``stop_unmasked``: a sequence leaves once its block is fully unmasked (a stop, no commit step).
    """
    strategy = maybe_record_steps_for(directory)
    padded = [p + [MASK_ID] * (-len(p) % L) for p in PROMPTS]
    blocks = torch.tensor([p[-L:] for p in padded])
    mask = torch.where(blocks == MASK_ID, MASKED, UNMASKED)
    history = torch.tensor([len(p) - L for p in padded])
    keys = torch.tensor([7, 3])  # first KV page of each sequence
    active = torch.ones(len(PROMPTS), dtype=torch.bool)
    for step in range(L + 2):
        if step > 0 and edit_inputs is not None:
            blocks = edit_inputs(step, blocks.clone())
        rows = active.nonzero().flatten()
        batch = len(rows)
        ids = [padded[b] for b in rows.tolist()] if step == 0 else blocks[rows].tolist()
        inputs = fake_inputs(ids, [0] * batch if step == 0 else history[rows].tolist(), step > 0, keys[rows].tolist())
        logits = base_logits(step, len(PROMPTS)).view(len(PROMPTS), L, VOCAB)
        if noise_seed is not None:
            gen = torch.Generator().manual_seed(noise_seed + step)
            logits = logits + NOISE * (2 * torch.rand(logits.shape, generator=gen) - 1)
        if edit_logits is not None:
            logits = edit_logits(step, logits)
        logits = logits[rows].reshape(batch * L, VOCAB)
        next_ids, extra = strategy.post_sampling(inputs, logits, logits.argmax(-1),
                                                 DLLMExtraInputs(dllm_mask=mask[rows].flatten().clone()))
        mask[rows] = extra.dllm_mask.view(batch, L)
        blocks[rows] = torch.where(mask[rows] == MASKED, MASK_ID, next_ids.view(batch, L))
        active &= ~(mask == (UNMASKED if stop_unmasked else CACHED)).all(dim=1)
        if not active.any():
            break
    strategy.step_recorder.flush()
    return directory


def maybe_record_steps_for(directory):
    os.environ[RECORD_ENV] = str(directory)
    try:
        strategy = maybe_record_steps(DLLMModelAgentStrategy(STATIC, MASK_ID))
    finally:
        os.environ.pop(RECORD_ENV)
    return strategy


def only(result: dict, sequence: int) -> dict:
    return next(s for s in result['sequences'] if s['sequence'] == sequence)


def test_recorder_round_trip(tmp_path):
    simulate(tmp_path)
    meta = load_meta(tmp_path)
    steps = load_steps(tmp_path)
    assert meta['block_length'] == L and meta['unmasking_strategy'] == 'low_confidence_static'
    assert meta['probe_ids'] == probe_ids(VOCAB).tolist() and meta['mask_token_id'] == MASK_ID
    assert [s['step'] for s in steps] == list(range(len(steps)))  # several chunks, in order
    assert len(list(tmp_path.glob('steps-*.pt'))) == -(-len(steps) // 8)
    prefill, first = steps[0], steps[1]
    assert prefill['kind'] == 'prefill' and first['kind'] == 'decode'
    assert prefill['prompt_ids'][0] == PROMPTS[0] + [MASK_ID] * 3
    assert prefill['seq_keys'].tolist() == [7, 3]
    assert tuple(first['topk_values'].shape) == (2, L, 4) and tuple(first['probe_logits'].shape) == (2, L, 64)
    # the mask as the unmasker got it: upstream turns an all-UNMASKED block into CACHED in place
    commits = [(s['input_mask'] == UNMASKED).all(dim=1) for s in steps]
    assert sum(int(c.sum()) for c in commits) == 2
    for s, c in zip(steps, commits):
        assert bool((s['next_mask'][c] == CACHED).all())
    assert steps[-1]['batch_size'] == 1 and steps[-1]['seq_keys'].tolist() == [3]  # seq 0 finished first
    # the recorded confidence is the softmax of the sampled token
    logits = base_logits(1, 2).view(2, L, VOCAB)
    expected = logits.softmax(-1).max(-1).values
    torch.testing.assert_close(first['confidence'], expected)
    torch.testing.assert_close(first['topk_values'][..., 0], logits.max(-1).values)
    recording = sequences_from_recording(steps, MASK_ID)
    assert [s.prompt_ids for s in recording.sequences] == PROMPTS
    assert [st.block_start for st in recording.sequences[1].steps[:2]] == [8, 8]


def test_identical_runs(tmp_path):
    a, b = simulate(tmp_path / 'a'), simulate(tmp_path / 'b')
    result = compare_recordings(a, b)
    assert result['summary']['verdicts'] == {'identical': 2} and result['summary']['match']
    assert result['summary']['layout']['first_step'] is None
    assert only(result, 0)['logits_before']['max_abs_delta_probe'] == 0.0


def test_steps_after_a_stop_are_not_a_difference(tmp_path):
    result = compare_recordings(simulate(tmp_path / 'a', stop_unmasked=True), simulate(tmp_path / 'b'))
    assert result['summary']['verdicts'] == {'identical': 2}
    assert [s['logits_before']['trailing_steps_after_stop'] for s in result['sequences']] == [1, 1]


def test_noise_only_is_identical_within_tolerance(tmp_path):
    a, b = simulate(tmp_path / 'a'), simulate(tmp_path / 'b', noise_seed=1)
    result = compare_recordings(a, b)
    assert result['summary']['verdicts'] == {'identical': 2}
    before = only(result, 0)['logits_before']
    assert 0 < before['max_abs_delta_probe'] <= NOISE and before['within_tolerance']


def _quiet(logits, positions):
    """Flat rows: the lowest confidence (1/VOCAB), so static unmasking leaves these slots masked."""
    for p in positions:
        logits[1, p] = 0.0
    return logits


def _flip(gap: float, swap: bool):
    """Seq 1, position 7: kept masked by the prefill, then at step 1 two top tokens ``gap`` apart
    (confidence ~0.5, so it is unmasked); ``swap`` reverses their order."""
    def edit(step, logits):
        if step == 0:
            _quiet(logits, [7])
        if step == 1:
            logits[1, 7] = -10.0
            logits[1, 7, 11] = 10.0 if not swap else 10.0 - gap
            logits[1, 7, 12] = 10.0 - gap if not swap else 10.0
        return logits
    return edit


@pytest.mark.parametrize('gap, near_tie', [(5e-6, True), (1.0, False)])
def test_argmax_flip(tmp_path, gap, near_tie):
    a = simulate(tmp_path / 'a', edit_logits=_flip(gap, swap=False))
    b = simulate(tmp_path / 'b', edit_logits=_flip(gap, swap=True), noise_seed=1)
    result = compare_recordings(a, b)
    seq = only(result, 1)
    diff = seq['first_difference']
    assert seq['verdict'] == ('near_tie' if near_tie else 'mismatch')
    assert diff['step'] == 1 and diff['type'] == 'argmax' and diff['positions'] == [7]
    assert diff['output_positions'] == [8 + 7 - len(PROMPTS[1])]
    assert diff['deciding_gap'] == pytest.approx(gap, rel=0.2, abs=2 * NOISE)
    assert not diff['gap_is_lower_bound'] and diff['noise_source'] == 'sequence'
    assert 0 < diff['noise'] <= NOISE
    assert only(result, 0)['verdict'] == 'identical'
    assert result['summary']['match'] is near_tie


def test_argmax_flip_at_prefill_borrows_batch_noise(tmp_path):
    def edit(swap):
        def apply(step, logits):
            if step == 0:
                logits[1, 7] = -10.0
                logits[1, 7, 11], logits[1, 7, 12] = (10.0, 10.0 - 5e-6) if not swap else (10.0 - 5e-6, 10.0)
            return logits
        return apply

    result = compare_recordings(simulate(tmp_path / 'a', edit(False)),
                                simulate(tmp_path / 'b', edit(True), noise_seed=1))
    diff = only(result, 1)['first_difference']
    assert diff['step'] == 0 and diff['kind'] == 'prefill' and diff['noise_source'] == 'batch'
    assert only(result, 1)['verdict'] == 'near_tie'


def test_selection_flip_near_tie(tmp_path):
    """Static top-2 at step 1 of seq 1: position 7 is certain; positions 5 and 6 compete for the other slot."""
    def edit(swap):
        def apply(step, logits):
            if step == 0:
                _quiet(logits, [5, 6, 7])
            if step == 1:
                _quiet(logits, [5, 6, 7])
                logits[1, 7, 4] = 8.0
                logits[1, 5, 9] = 3.0
                logits[1, 6, 9] = 3.0 + (-2e-5 if swap else 2e-5)
            return logits
        return apply

    result = compare_recordings(simulate(tmp_path / 'a', edit(False)),
                                simulate(tmp_path / 'b', edit(True), noise_seed=1))
    seq = only(result, 1)
    diff = seq['first_difference']
    assert diff['step'] == 1 and diff['type'] == 'selection' and diff['positions'] == [5, 6]
    assert seq['verdict'] == 'near_tie'
    component = diff['components'][0]
    assert component['gap_a'] > 0 and component['gap_b'] > 0


def test_clear_selection_flip_is_a_mismatch(tmp_path):
    def edit(swap):
        def apply(step, logits):
            if step in (0, 1):
                _quiet(logits, [5, 6, 7])
            if step == 1:
                logits[1, 7, 4] = 8.0
                logits[1, 5 if swap else 6, 9] = 3.0
            return logits
        return apply

    result = compare_recordings(simulate(tmp_path / 'a', edit(False)),
                                simulate(tmp_path / 'b', edit(True), noise_seed=1))
    seq = only(result, 1)
    assert seq['first_difference']['type'] == 'selection' and seq['verdict'] == 'mismatch'


def test_input_divergence_is_reported(tmp_path):
    def tamper(step, blocks):
        if step == 3:
            blocks[1, 0] = (blocks[1, 0] + 1) % MASK_ID  # a prompt token of seq 1 changes
        return blocks

    a, b = simulate(tmp_path / 'a'), simulate(tmp_path / 'b', edit_inputs=tamper)
    result = compare_recordings(a, b)
    seq = only(result, 1)
    assert seq['verdict'] == 'inputs_diverged' and seq['first_difference']['step'] == 3
    assert only(result, 0)['verdict'] == 'identical' and not result['summary']['match']


def _factory(hf_overrides=None):
    from lmdeploy.pytorch.config import MiscConfig, ModelConfig, override_hf_config
    from lmdeploy.pytorch.strategies import build_strategy_factory
    hf_config = tiny_sdar_hf_config()
    model_config = ModelConfig.from_hf_config(hf_config, dtype='float32', device_type='cpu')
    if hf_overrides:
        override_hf_config(model_config.hf_config, hf_overrides)
    model_config.dllm_mask_token = hf_config.mask_token_id
    return build_strategy_factory(model_config, MiscConfig(dllm_config=DLLMConfig(block_length=L)))


def test_factory_hook(tmp_path, monkeypatch):
    """The plugin's factory attaches the recorder only when the variable is set; under delayed cache
    the step's processed set is recorded (read before the runtime ends the step)."""
    from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import DecodeStep
    monkeypatch.delenv(RECORD_ENV, raising=False)
    assert not hasattr(_factory().build_model_agent_strategy(), 'step_recorder')
    monkeypatch.setenv(RECORD_ENV, str(tmp_path / 'stock'))
    assert isinstance(_factory().build_model_agent_strategy().step_recorder, StepRecorder)

    monkeypatch.setenv(RECORD_ENV, str(tmp_path / 'delayed'))
    factory = _factory({'dllm_focus': {'enable_delayed_cache': True}})
    strategy = factory.build_model_agent_strategy()
    mask_id = strategy.dllm_mask_token
    processed = torch.ones(1, L, dtype=torch.bool)
    processed[0, :3] = False  # decoded, stable prompt slots
    ids = [5, 6, 7, 8, mask_id, mask_id, mask_id, mask_id]
    input_mask = torch.tensor([UNMASKED] * 4 + [MASKED] * 4)
    num_rows = int(processed.sum())
    factory.delayed_cache_runtime.step = DecodeStep(batch_size=1, block_length=L, num_rows=num_rows, num_logit_rows=4,
                                                    rows=None, fresh=processed, masked=(input_mask == MASKED).view(1, L),
                                                    masked_unprocessed=(input_mask == MASKED).view(1, L) & ~processed,
                                                    processed_per_seq=processed.sum(1),
                                                    kept_per_seq=processed.sum(1))
    logits = torch.randn(L, 512)
    strategy.post_sampling(fake_inputs([ids], [16], True, [4]), logits, logits.argmax(-1),
                           DLLMExtraInputs(dllm_mask=input_mask.clone()))
    assert factory.delayed_cache_runtime.step is None
    strategy.step_recorder.flush()
    (record, ) = load_steps(tmp_path / 'delayed')
    assert torch.equal(record['processed'], processed) and torch.equal(record['input_mask'][0], input_mask)
    assert load_meta(tmp_path / 'delayed')['strategy_class'].endswith('DelayedCacheAgentStrategy')


# ---- the reference loop -------------------------------------------------------------------------

REF_L = 8
REF_STATIC = DLLMConfig(block_length=REF_L, unmasking_strategy=UnmaskingStrategy.LOW_CONFIDENCE_STATIC,
                        denoising_steps=4)


@pytest.fixture(scope='module')
def tiny_reference():
    config = tiny_sdar_hf_config()
    weights = random_sdar_weights(config, torch.Generator().manual_seed(3))
    weights['lm_head.weight'] = weights['lm_head.weight'] * 5.0  # spread confidences
    prompts = [torch.randint(0, config.mask_token_id, (n, ), generator=torch.Generator().manual_seed(n)).tolist()
               for n in (3, 11, 6)]
    return config, weights, prompts


_reference_runs = {}


def _run_reference(tiny_reference, dtype, delayed_cache=True):
    """Reference results per (dtype, delayed_cache), run once per test session."""
    config, weights, prompts = tiny_reference
    key = (dtype, delayed_cache)
    if key not in _reference_runs:
        model = SDARReference({k: v.to(dtype) for k, v in weights.items()}, config)
        _reference_runs[key] = reference_generate(model, prompts, REF_L, config.mask_token_id, REF_STATIC,
                                                  max_new_tokens=2 * REF_L, delayed_cache=delayed_cache,
                                                  commit_mode='exact', record_steps=True)
    return _reference_runs[key], prompts


def test_reference_against_itself_and_fp32(tiny_reference):
    probes = probe_ids(tiny_reference[0].vocab_size)
    rule = UnmaskRule('low_confidence_static')
    ref64, prompts = _run_reference(tiny_reference, torch.float64)
    seqs64 = sequences_from_reference(ref64, prompts, probes)
    same = compare_sequences(seqs64, sequences_from_reference(ref64, prompts, probes), rule, probes)
    assert same['summary']['verdicts'] == {'identical': 3}
    ref32, _ = _run_reference(tiny_reference, torch.float32)
    mixed = compare_sequences(sequences_from_reference(ref32, prompts, probes), seqs64, rule, probes)
    assert mixed['summary']['match'], mixed['summary']
    assert mixed['summary']['dtype'] == 'float32'
    assert all(s['logits_before']['steps'] > 0 for s in mixed['sequences'])


def test_engine_format_replay_against_reference(tmp_path, tiny_reference):
    """The fp32 reference's steps replayed through the recorder-wrapped upstream strategy, as an
    engine would record them (rows of all sequences per step), compared with the fp64 reference."""
    config, _, _ = tiny_reference
    ref32, prompts = _run_reference(tiny_reference, torch.float32, delayed_cache=False)
    strategy = DLLMModelAgentStrategy(REF_STATIC, config.mask_token_id)
    StepRecorder(tmp_path, chunk_steps=4).attach(strategy)
    steps = [r.steps for r in ref32]
    for g in range(max(len(s) for s in steps)):
        rows = [b for b in range(len(steps)) if g < len(steps[b])]
        records = [steps[b][g] for b in rows]
        prefill = records[0].kind == 'prefill'
        if prefill:
            ids = [p + [config.mask_token_id] * (-len(p) % REF_L) for p in (prompts[b] for b in rows)]
        else:
            ids = [r.input_ids.tolist() for r in records]
        inputs = fake_inputs(ids, [0 if prefill else r.history_length for r in records], not prefill,
                             [100 + b for b in rows])
        logits = torch.cat([r.logits for r in records])
        mask = torch.cat([r.input_mask for r in records])
        _, extra = strategy.post_sampling(inputs, logits, logits.argmax(-1), DLLMExtraInputs(dllm_mask=mask.clone()))
        assert torch.equal(extra.dllm_mask, torch.cat([r.next_mask for r in records]))  # same decisions
    strategy.step_recorder.flush()

    ref64, _ = _run_reference(tiny_reference, torch.float64, delayed_cache=False)
    reference = sequences_from_reference(ref64, prompts, probe_ids(config.vocab_size))
    result = compare_to_reference_sequences(tmp_path, reference)
    assert result['summary']['match'], result['summary']
    assert len(result['sequences']) == 3 and all(s['steps_a'] == s['steps_b'] for s in result['sequences'])
