"""Tiny trained SDAR (``lmdeploy_focus_dev.tools.tiny_dllm``): tokenizer, tasks, training layout, export.

Oracles: per-element loops for the attention masks, the task results recomputed from the question
text, HF ``AutoTokenizer`` / LMDeploy's ``Tokenizer`` on the written files, and the reference SDAR
(``reference.sdar_model`` over a paged cache) on the exported weights, which must give the training
module's logits both for plain block-causal prefill and for the noisy half of the two-copy layout.
"""
import json
import secrets
from pathlib import Path

import pytest
import torch

from lmdeploy_focus_dev.reference.checkpoint import load_sdar_checkpoint
from lmdeploy_focus_dev.reference.sdar_model import PagedStep
from lmdeploy_focus_dev.testing.paged_kv_cache import PagedKVCache
from lmdeploy_focus_dev.tools.safetensors_shards import plan_shards
from lmdeploy_focus_dev.tools.tiny_dllm import tokenizer as tok
from lmdeploy_focus_dev.tools.tiny_dllm.data import CHAT_OVERHEAD, SEQ_LEN, TextCorpus, TrainingData, task_sequence
from lmdeploy_focus_dev.tools.tiny_dllm.evaluate import heldout_tasks, task_accuracy
from lmdeploy_focus_dev.tools.tiny_dllm.export import MAX_SHARD_BYTES, arch_spec, export_checkpoint
from lmdeploy_focus_dev.tools.tiny_dllm.model import TinySDAR
from lmdeploy_focus_dev.tools.tiny_dllm.objective import (block_causal_mask, block_diffusion_mask, diffusion_logits,
                                                      diffusion_loss, sample_noise)
from lmdeploy_focus_dev.tools.tiny_dllm.sizes import SIZES
from lmdeploy_focus_dev.tools.tiny_dllm.tasks import KINDS, MIN_ANSWER_TOKENS, is_heldout, sample_tasks
from lmdeploy_focus_dev.tools.tiny_dllm.train import TrainConfig, build_model, train
from lmdeploy_focus_dev.tools.train_tiny_dllm import main as train_cli
from lmdeploy_focus_dev.tools.weight_layouts import tensor_specs

L = 32
MICRO = SIZES['micro'].shape
REPO = Path(__file__).resolve().parents[1]
CORPUS_TEXT = '\n'.join(f'And the {w} said unto the {v}, Let there be {n} cubits of light.'
                        for w, v, n in zip(['Lord', 'man', 'king', 'woman'] * 30, ['people', 'servant', 'prophet'] * 40,
                                           range(120))) + '\n'


def micro_model(seed: int, std: float = 0.02) -> TinySDAR:
    model = TinySDAR(MICRO)
    model.init_weights(torch.Generator().manual_seed(seed), std=std)
    return model.eval()


# ---- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_round_trip_and_autotokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok.write_tokenizer_files(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.eos_token_id == tok.EOS_ID and hf.pad_token_id == tok.PAD_ID
    assert hf.convert_tokens_to_ids(tok.MASK_TOKEN) == tok.MASK_ID == 259 and len(hf) == 260 <= tok.VOCAB_SIZE
    for text in ('In the beginning God created the heaven and the earth.\n', ' 2  spaces\tand tab ',
                 'non-ASCII: héllo wörld ✓ 你好 🙂', ''.join(chr(c) for c in range(256))):
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text) == list(text.encode('utf-8'))
        assert hf.decode(tok.encode(text)) == tok.decode(tok.encode(text)) == text
    question = '1) 12 + 34\n2) reverse abc'
    chat = hf.apply_chat_template([{'role': 'user', 'content': question}], add_generation_prompt=True, tokenize=True)
    chat = chat['input_ids'] if isinstance(chat, dict) or hasattr(chat, 'keys') else chat
    assert list(chat) == tok.chat_prompt_ids(question)
    ids = tok.encode('ab') + [tok.EOS_ID, tok.MASK_ID, tok.PAD_ID]
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids) == 'ab'
    assert hf.encode('<|im_start|>x<|MASK|>', add_special_tokens=False) == [tok.IM_START_ID, ord('x'), tok.MASK_ID]


# ---- tasks and sequences -------------------------------------------------------------------------


def _recompute(sub) -> str:
    """The result of a sub-question, recomputed from its text alone."""
    words = sub.question.split(' ')
    if sub.kind == 'add':
        return str(int(words[0]) + int(words[2]))
    if sub.kind == 'sort':
        return ''.join(sorted(words[1]))
    if sub.kind == 'reverse':
        return words[1][::-1]
    if sub.kind == 'copy':
        return words[1]
    if sub.kind == 'lookup':
        return dict(pair.split('=') for pair in words[2:])[words[0]]
    shown = words[1]  # pattern: the shortest period consistent with the shown text
    period = next(p for p in range(2, 5) if all(shown[i] == shown[i % p] for i in range(len(shown))))
    return ''.join(shown[(len(shown) + i) % period] for i in range(len(sub.result)))


def test_tasks_are_deterministic_correct_and_cover_a_block():
    seed = f'test/{secrets.randbits(31)}'
    tasks = sample_tasks(300, seed, heldout=False, max_chars=SEQ_LEN - CHAT_OVERHEAD)
    assert [t.question for t in tasks] == [t.question for t in sample_tasks(300, seed, False, SEQ_LEN - CHAT_OVERHEAD)]
    assert [t.question for t in tasks] != [t.question for t in sample_tasks(300, seed + 'x', False)]
    assert {k for t in tasks for k in t.kinds} == set(KINDS), seed
    for task in tasks:
        assert not is_heldout(task)
        for sub in task.subtasks:
            assert sub.result == _recompute(sub), (seed, sub)
        prompt_len, answer_len = len(tok.chat_prompt_ids(task.question)), len(tok.encode(task.answer)) + 1
        assert answer_len >= MIN_ANSWER_TOKENS, (seed, task)
        first_full_block = -(-prompt_len // L) * L
        assert first_full_block + L <= prompt_len + answer_len, f'{seed}: answer covers no whole block'
    heldout = heldout_tasks(50)
    assert all(is_heldout(t) for t in heldout) and not {t.question for t in heldout} & {t.question for t in tasks}
    assert [t.question for t in heldout_tasks(10)] == [t.question for t in heldout[:10]]
    with pytest.raises(ValueError):  # no task fits: fail instead of drawing forever
        sample_tasks(1, seed, heldout=False, max_chars=40)


def test_task_sequence_layout_matches_inference_padding():
    task = sample_tasks(1, f'layout/{secrets.randbits(31)}', heldout=False)[0]
    ids, trained = task_sequence(task, SEQ_LEN, L)
    prompt = tok.chat_prompt_ids(task.question)
    answer = tok.encode(task.answer) + [tok.EOS_ID]
    end = len(prompt) + len(answer)
    block_end = -(-end // L) * L
    assert len(ids) == len(trained) == SEQ_LEN
    assert ids[:end] == prompt + answer
    assert ids[end:block_end] == [tok.EOS_ID] * (block_end - end)  # the engine finishes the eos's block
    assert ids[block_end:] == [tok.PAD_ID] * (SEQ_LEN - block_end)
    # the prompt stays clean; its last block's tail (mask-padded at inference) is trained
    assert trained == [False] * len(prompt) + [True] * (block_end - len(prompt)) + [False] * (SEQ_LEN - block_end)


def test_training_batch_is_deterministic_and_mixed():
    data = TrainingData(TextCorpus(CORPUS_TEXT), seed=3, seq_len=SEQ_LEN, block_length=L)
    a, b = data.batch(5, 8), data.batch(5, 8)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.trained, b.trained)
    assert not torch.equal(a.ids, data.batch(6, 8).ids)
    assert a.is_task.tolist() == [True] * 4 + [False] * 4
    assert a.trained[~a.is_task].all()  # text: every position trained
    text = tok.decode(a.ids[-1].tolist())
    assert text in CORPUS_TEXT and CORPUS_TEXT[CORPUS_TEXT.index(text) - 1] == '\n'  # starts at a line start


# ---- masks and the objective ---------------------------------------------------------------------


def test_block_diffusion_mask_is_block_causal_across_and_bidirectional_within():
    n, blk = 12, 4
    mask = block_diffusion_mask(n, blk)
    assert mask.shape == (2 * n, 2 * n) and mask.dtype == torch.bool
    for i in range(2 * n):
        for j in range(2 * n):
            qb, kb = (i % n) // blk, (j % n) // blk
            q_noisy, k_noisy = i < n, j < n
            if q_noisy and k_noisy:
                expected = qb == kb  # the noisy block itself, both directions
            elif q_noisy:
                expected = kb < qb  # clean history only
            elif k_noisy:
                expected = False  # clean stream never reads noise
            else:
                expected = kb <= qb  # block-causal prefill
            assert bool(mask[i, j]) == expected, (i, j)
    causal = block_causal_mask(n, blk)
    assert torch.equal(causal, mask[n:, n:])
    assert causal[1, 3] and not causal[3, 4]  # within a block both ways; never into a later block


def test_later_blocks_do_not_change_earlier_logits():
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    model = micro_model(int(torch.randint(1 << 30, (), generator=gen)), std=0.2)
    n = 3 * L
    clean = torch.randint(0, 256, (2, n), generator=gen)
    noisy = torch.where(torch.rand(2, n, generator=gen) < 0.5, tok.MASK_ID, clean)
    changed_clean, changed_noisy = clean.clone(), noisy.clone()
    changed_clean[:, 2 * L:] = torch.randint(0, 256, (2, L), generator=gen)
    changed_noisy[:, 2 * L:] = tok.MASK_ID
    with torch.no_grad():
        base = diffusion_logits(model, clean, noisy, L)
        other = diffusion_logits(model, changed_clean, changed_noisy, L)
        torch.testing.assert_close(base[:, :2 * L], other[:, :2 * L], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base[:, 2 * L:], other[:, 2 * L:])
        # a noisy block sees only the *clean* earlier blocks: noising block 0 leaves block 1 alone
        renoised = noisy.clone()
        renoised[:, :L] = tok.MASK_ID
        torch.testing.assert_close(diffusion_logits(model, clean, renoised, L)[:, L:], base[:, L:], atol=1e-5,
                                   rtol=1e-5)
        # plain block-causal pass (prefill)
        positions, causal = torch.arange(n), block_causal_mask(n, L)
        torch.testing.assert_close(model(clean, positions, causal)[:, :2 * L],
                                   model(changed_clean, positions, causal)[:, :2 * L], atol=1e-5, rtol=1e-5)


def test_noise_masks_trained_positions_only_with_one_level_per_block():
    trained = torch.zeros(4, 3 * L, dtype=torch.bool)
    trained[:, L // 2:] = True
    seed = secrets.randbits(31)
    noise = sample_noise(trained, L, torch.Generator().manual_seed(seed))
    again = sample_noise(trained, L, torch.Generator().manual_seed(seed))
    assert torch.equal(noise.masked, again.masked) and torch.equal(noise.level, again.level)
    assert not (noise.masked & ~trained).any()
    levels = noise.level.view(4, 3, L)
    assert (levels == levels[..., :1]).all() and (levels > 0).all() and (levels < 1).all()


def test_a_few_training_steps_reduce_the_loss():
    cfg = TrainConfig(shape=MICRO, steps=30, batch_size=8, lr=3e-3, seed=secrets.randbits(16), warmup_steps=5,
                      log_every=10)
    corpus = TextCorpus(CORPUS_TEXT)
    probe = TrainingData(corpus, cfg.seed + 1, cfg.seq_len, L).batch(0, 16)
    noise = sample_noise(probe.trained, L, torch.Generator().manual_seed(0), eps=0.3)

    def probe_loss(model):
        with torch.no_grad():
            return float(diffusion_loss(model, probe.ids, probe.trained, noise, tok.MASK_ID, L).masked_ce)

    before = probe_loss(build_model(cfg, torch.device('cpu')))  # same init as train() draws
    model, log = train(cfg, corpus, 'cpu', log=lambda _: None)
    after = probe_loss(model)
    assert log.steps_done == 30 and len(log.curve) == 3 and not log.stopped_by_time_cap
    assert after < before - 1.0, (cfg.seed, before, after)


# ---- export ------------------------------------------------------------------------------------


def _reference_prefill(ckpt, tokens: list[int]) -> torch.Tensor:
    """Logits of the reference SDAR's block-causal prefill over ``tokens`` (paged cache)."""
    n, d = len(tokens), ckpt.model.dims
    cache = PagedKVCache(d.num_layers, -(-n // 16), 16, d.num_kv_heads, d.head_dim, dtype=torch.float32)
    cache.allocator.ensure_capacity(0, n)
    lengths = torch.tensor([n])
    step = PagedStep(cache.allocator.page_table([0]), torch.tensor([0]), lengths, lengths, causal_block_size=L)
    return ckpt.model.forward(torch.tensor(tokens), torch.arange(n), cache.caches, step)


def test_exported_checkpoint_is_the_training_model(tmp_path):
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    model = micro_model(int(torch.randint(1 << 30, (), generator=gen)), std=0.2)
    out = export_checkpoint(model, tmp_path / 'tiny-sdar-micro-b32', dtype='float32')
    config = json.loads((out / 'config.json').read_text())
    assert config['architectures'] == ['SDARForCausalLM'] and config['model_type'] == 'sdar'
    assert config['auto_map']['AutoConfig'] == 'configuration_sdar.SDARConfig'
    assert (out / 'configuration_sdar.py').is_file()
    assert config['mask_token_id'] == tok.MASK_ID and config['vocab_size'] == tok.VOCAB_SIZE
    assert json.loads((out / 'generation_config.json').read_text())['eos_token_id'] == [tok.EOS_ID, tok.PAD_ID]

    ckpt = load_sdar_checkpoint(out, dtype=torch.float32)
    assert ckpt.mask_token_id == tok.MASK_ID
    n = 3 * L
    clean = torch.randint(0, 256, (n, ), generator=gen)
    noisy = torch.where(torch.rand(n, generator=gen) < 0.6, tok.MASK_ID, clean)
    with torch.no_grad():
        prefill = model(clean[None], torch.arange(n), block_causal_mask(n, L))[0]
        torch.testing.assert_close(_reference_prefill(ckpt, clean.tolist()), prefill, atol=1e-4, rtol=1e-4)
        # training's noisy block b == inference's view: committed clean blocks < b, then block b as it is
        trained_view = diffusion_logits(model, clean[None], noisy[None], L)[0]
        for b in range(3):
            tokens = clean[:b * L].tolist() + noisy[b * L:(b + 1) * L].tolist()
            torch.testing.assert_close(_reference_prefill(ckpt, tokens)[-L:], trained_view[b * L:(b + 1) * L],
                                       atol=1e-4, rtol=1e-4)

    from lmdeploy.pytorch.config import ModelConfig  # what the engine reads (plugin active: conftest)
    engine_config = ModelConfig.from_pretrained(str(out))
    assert (engine_config.dllm_mask_token, engine_config.dllm_block_length) == (tok.MASK_ID, L)
    assert (engine_config.head_dim, engine_config.vocab_size) == (MICRO.head_dim, tok.VOCAB_SIZE)
    from lmdeploy.tokenizer import Tokenizer
    engine_tokenizer = Tokenizer(str(out))
    assert engine_tokenizer.eos_token_id == tok.EOS_ID
    assert engine_tokenizer.encode('Let there be light', add_bos=False) == tok.encode('Let there be light')


@pytest.mark.parametrize('size', ['5m', '25m'])
def test_real_sizes_export_in_committable_shards(size):
    shape = SIZES[size].shape
    assert shape.num_layers >= 6 and shape.head_dim in (64, 128)
    shards = plan_shards(tensor_specs(arch_spec(shape, f'tiny-sdar-{size}-b32')), torch.bfloat16, MAX_SHARD_BYTES)
    assert all(s.nbytes <= MAX_SHARD_BYTES < 16 * 2**20 for s in shards)
    with torch.device('meta'):  # names and shapes only
        state = TinySDAR(shape).state_dict()
    assert {t.name: t.shape for s in shards for t in s.tensors} == {k: tuple(v.shape) for k, v in state.items()}


def test_cli_trains_exports_and_evaluates(tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'kjv_train.txt').write_text(CORPUS_TEXT)
    (data / 'kjv_heldout.txt').write_text(CORPUS_TEXT[:2000])
    out = train_cli(['--size', 'micro', '--out', str(tmp_path / 'out'), '--data', str(data), '--steps', '4',
                     '--eval-tasks', '2', '--eval-text', '1', '--eval-workers', '1', '--log-every', '2',
                     '--eval-minutes', '30'])  # a loaded CI machine must not hit the eval deadline
    assert out.name == 'tiny-sdar-micro-b32'
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'README.md', 'train_log.json',
            'eval.json'} <= {p.name for p in out.iterdir()}
    log = json.loads((out / 'train_log.json').read_text())
    assert log['summary']['steps_done'] == 4 and [e['step'] for e in log['curve']] == [2, 4]
    assert '--steps 4' in log['reproduce']
    evaluation = json.loads((out / 'eval.json').read_text())
    assert [r['threshold'] for r in evaluation['tasks']] == [0.9, 0.8, 0.7]
    assert all(r['tasks'] == 2 and 0 <= r['exact_match'] <= 1 and r['tokens_per_forward'] >= 1
               for r in evaluation['tasks'])
    assert [r['prompts'] for r in evaluation['text']] == [1, 1, 1]
    assert 'seed 0' in (out / 'README.md').read_text()


# ---- the committed model --------------------------------------------------------------------------

COMMITTED = sorted(p for p in (REPO / 'models').glob('tiny-sdar-*-b32') if (p / 'eval.json').is_file())
ACCURACY_TASKS = 16  # the first tasks of the committed eval's held-out sample


@pytest.mark.skipif(not COMMITTED, reason='no trained model committed under models/tiny-sdar-*-b32/ (issue 6)')
@pytest.mark.parametrize('model_dir', COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_model_reaches_its_documented_accuracy(model_dir):
    """Re-decode the first held-out tasks on CPU; allow two tasks of numeric drift from the GPU host's run."""
    documented = next(r for r in json.loads((model_dir / 'eval.json').read_text())['tasks'] if r['threshold'] == 0.9)
    expected = sum(documented['correct'][:ACCURACY_TASKS]) / ACCURACY_TASKS
    measured = task_accuracy(model_dir, ACCURACY_TASKS, threshold=0.9)
    assert measured >= expected - 2 / ACCURACY_TASKS, (model_dir.name, measured, expected)
