"""CPU tests of the serving edge-case check's logic (``checks/serving_edge``): expected outputs
against the plugin's DLLM sequence + stopping criteria (the engine's), the mid-block length / stop-token
choices, the comparison, the staggered schedule, the summary table, the prompt sets (with the
committed tiny model's tokenizer) and the driver's engine configs (prefix caching + fast commit
refused with the message the check looks for)."""
import importlib.util
import os
import random
import secrets
import sys
from types import SimpleNamespace

import pytest
import torch
from lmdeploy.pytorch import consts

from lmdeploy_focus_dev.testing.stop_replay import replay_stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = os.path.join(ROOT, 'checks')
MODEL = os.path.join(ROOT, 'models', 'tiny-sdar-5m-b32')
TASKS = os.path.join(ROOT, 'benchmark', 'data', 'tiny_tasks_heldout.jsonl')
sys.path.insert(0, CHECKS)
from serving_edge import logic, prompts  # noqa: E402
from serving_edge.logic import Start  # noqa: E402

sys.path.remove(CHECKS)

UNMASKED, CACHED = consts.DLLM_UNMASKED, consts.DLLM_CACHED
MASK_ID = 99


def engine_output(prompt: list, trajectory: list, L: int, max_new_tokens: int, stop_ids: list) -> list:
    """The generated ids the engine's DLLM sequence + stopping criteria return when every block is decoded
    in one step to ``trajectory``'s tokens, then committed (the engine's order)."""
    full = list(prompt) + list(trajectory)
    block_start, steps = (len(prompt) // L) * L, []
    if len(prompt) % L == 0:  # a whole prompt block: the prefill step commits it, output starts in a new block
        steps.append(SimpleNamespace(history_length=len(prompt) - L, next_token_ids=torch.tensor(prompt[-L:]),
                                     next_mask=torch.full((L, ), CACHED, dtype=torch.long)))
    while block_start + L <= len(full):
        ids = torch.tensor(full[block_start:block_start + L])
        for mask_value in (UNMASKED, CACHED):  # the decode step that finishes the block, then its commit step
            steps.append(SimpleNamespace(history_length=block_start, next_token_ids=ids,
                                         next_mask=torch.full((L, ), mask_value, dtype=torch.long)))
        block_start += L
    for i, step in enumerate(steps):
        step.kind = 'prefill' if i == 0 else 'decode'
    stop = replay_stop(prompt, steps, L, MASK_ID, max_new_tokens, stop_ids)
    assert stop is not None, 'trajectory too short for the replay'
    generated, index = stop
    assert (steps[index].next_mask == UNMASKED).all(), 'stopped on a commit step'
    return generated


# ---- expected outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize('L', [4, 8, 32])
def test_expected_output_matches_the_engines_stop_rule(L):
    """Random prompts / trajectories over a tiny vocabulary, so stop tokens fall everywhere: inside the
    prompt's last block (checked from the prompt's end), several per block, in the block of the length cut."""
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    for trial in range(150 if L < 32 else 40):
        prompt = [rng.randrange(6) for _ in range(rng.randrange(1, 3 * L))]
        max_new = rng.randrange(1, 4 * L)
        stop_ids = sorted({rng.randrange(6) for _ in range(rng.randrange(0, 3))})
        trajectory = [rng.randrange(6) for _ in range(max_new + 2 * L)]
        expected = logic.expected_output(trajectory, len(prompt), L, max_new, stop_ids)
        assert expected == engine_output(prompt, trajectory, L, max_new, stop_ids), (seed, trial, prompt, max_new, stop_ids)


def test_expected_output_rules_by_hand():
    L, P = 8, 5  # the prompt's last block holds output positions 0..2
    traj = [7, 1, 7, 2, 3, 4, 5, 6, 7, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    # a stop token in the prompt's last block ends the output (upstream 0.18 skipped that block)
    assert logic.expected_output(traj, P, L, 20, [7]) == traj[:1]
    assert logic.expected_output(traj, P, L, 20, [2]) == traj[:4]
    # prompt length a multiple of L: the first output block is checked from its first position
    assert logic.expected_output(traj, 8, L, 20, [7]) == traj[:1]
    # block 1 holds output 3..10; stop token 3 at output 4 and a length cut after output 5 are both
    # in it: the earlier one ends the output (upstream 0.18: the length cut)
    assert logic.expected_output(traj, P, L, 6, [3]) == traj[:5]
    assert logic.expected_output(traj, P, L, 5, [3]) == traj[:5]
    assert logic.expected_output(traj, P, L, 4, [3]) == traj[:4]  # cut before the stop token
    assert logic.expected_output(traj, P, L, 12, [3]) == traj[:5]  # stop in block 1, cut in block 2
    assert engine_output([0] * P, traj + [0] * 16, L, 6, [3]) == traj[:5]
    assert engine_output([0] * P, traj + [0] * 16, L, 20, [7]) == traj[:1]


def test_expected_output_is_none_when_undecidable():
    L, P = 8, 8
    traj = [1] * 10
    assert logic.expected_output(traj, P, L, 10, []) == traj  # the cut is inside the known tokens
    assert logic.expected_output(traj, P, L, 11, []) is None  # needs an 11th token
    assert logic.expected_output(traj, P, L, 30, [5]) is None  # no stop in the known part, the rest unknown
    assert logic.expected_output(traj + [5], P, L, 30, [5]) == traj + [5]  # the stop is found before the unknown
    with pytest.raises(ValueError):
        logic.expected_output(traj, P, L, 0, [])


def test_block_position():
    assert logic.block_position(5, 0, 8) == (0, 5)
    assert logic.block_position(5, 2, 8) == (0, 7)
    assert logic.block_position(5, 3, 8) == (1, 0)
    assert logic.block_position(8, 0, 8) == (0, 0)
    assert logic.is_mid_block(5, 3, 8, margin=2) is False  # first position of its block
    assert logic.is_mid_block(5, 6, 8, margin=2) is True  # in-block index 3


# ---- case choices ----------------------------------------------------------------------------------


def test_choose_mid_block_length():
    L, P = 32, 45  # output position i is at in-block index (13 + i) % 32
    traj = list(range(100, 196))
    n = logic.choose_mid_block_length(traj, P, L, target=40)
    assert logic.is_mid_block(P, n - 1, L) and abs(n - 40) <= 2
    assert logic.expected_output(traj, P, L, n, []) == traj[:n]
    # a target at a block end moves inside the block: n - 1 = 18 is in-block 31
    n = logic.choose_mid_block_length(traj, P, L, target=19)
    assert n != 19 and logic.is_mid_block(P, n - 1, L)
    # an EOS at output 30: lengths past it would end at the EOS, so the choice stays below it
    eos_traj = traj[:30] + [258] + traj[31:]
    n = logic.choose_mid_block_length(eos_traj, P, L, target=75, stop_ids=[258])
    assert n <= 30 and logic.expected_output(eos_traj, P, L, n, [258]) == eos_traj[:n]
    assert logic.choose_mid_block_length(traj[:1], 31, L, target=1) is None  # the only position ends a block


def test_choose_length_limits():
    L = 32
    rng = random.Random(7)
    cands = [('task0', 'task', 58), ('task1', 'task', 95), ('text0', 'text', 47), ('text1', 'text', 64)]
    traj = {label: [rng.randrange(32, 127) for _ in range(96)] for label, _, _ in cands}
    chosen = logic.choose_length_limits(cands, traj, L, (logic.FIRST_BLOCK, 40, 75))
    assert len(chosen) == 3 and len(set(chosen)) == 3
    lens = {label: p for label, _, p in cands}
    kinds = {label: k for label, k, _ in cands}
    (first, n0), (second, n1), (third, n2) = chosen.items()
    assert kinds[first] == 'task' and kinds[second] == 'text' and kinds[third] == 'task'  # alternating
    assert logic.block_position(lens[first], n0 - 1, L)[0] == 0  # inside the prompt's last block
    assert abs(n1 - 40) <= 2 and abs(n2 - 75) <= 2
    for label, n in chosen.items():
        assert logic.is_mid_block(lens[label], n - 1, L)
    # a prompt ending at in-block 30 leaves no mid-block room in its first output block
    assert logic.choose_length_limits([('x', 'task', 30)], {'x': traj['task0']}, L, (logic.FIRST_BLOCK, )) == {}
    # EOS early in every trajectory: a long target cannot be met
    eos = {label: [258] + t[1:] for label, t in traj.items()}
    assert logic.choose_length_limits(cands, eos, L, (75, ), stop_ids=[258]) == {}


def test_choose_mid_block_stop():
    L, P = 8, 5
    # token 7 occurs in the prompt's last block (output 0, in-block 5) and at output 8 (block 1, in-block 5)
    traj = [7, 1, 2, 3, 4, 5, 6, 1, 7, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4]
    choice = logic.choose_mid_block_stop(traj, P, L, max_new_tokens=len(traj))
    out = logic.expected_output(traj, P, L, len(traj), [choice.token])
    assert out[-1] == choice.token and len(out) == choice.length < len(traj)
    assert choice.block >= 1 and 2 <= choice.in_block <= L - 3
    assert (choice.block, choice.in_block) == logic.block_position(P, choice.length - 1, L)
    # with 7 the only token allowed, its first occurrence stops (the prompt's last block is checked)
    only7 = logic.choose_mid_block_stop(traj, P, L, len(traj), exclude=[1, 2, 3, 4, 5, 6])
    assert only7 == logic.StopChoice(7, 1, 0, 5)
    # another stop id (EOS) that comes first rules out tokens after it
    eos_first = [1, 2, 258] + traj[3:]
    c = logic.choose_mid_block_stop(eos_first, 8, L, len(eos_first), other_stop_ids=[258])
    assert c is None  # 1 and 2 occur again only after it, and 258 itself is another request's stop
    # a stop token before the length cut of the same block ends the output there
    assert logic.choose_mid_block_stop([1, 1, 1, 1, 1, 9, 1, 1], 8, L, 8, exclude=[1]) == logic.StopChoice(9, 6, 0, 5)
    # one at the last position of the cut is not "because of that token" (the cut ends there anyway)
    assert logic.choose_mid_block_stop([1, 1, 1, 1, 1, 9, 1, 1], 8, L, 6, exclude=[1]) is None


def test_choose_mid_block_stop_none_when_everything_is_at_block_edges():
    L, P = 4, 4
    traj = [1, 2, 3, 4] * 4  # every token first occurs at the first block, margin 2 leaves no room at L=4
    assert logic.choose_mid_block_stop(traj, P, L, len(traj)) is None


# ---- comparison --------------------------------------------------------------------------------------


def test_check_logprobs():
    tokens = [5, 9, 11]
    good = [{5: -0.1, 6: -2.0}, {9: -0.3}, {11: -0.01, 2: -4.0, 3: -5.0}]
    assert logic.check_logprobs(tokens, good, 2)['passed']
    assert not logic.check_logprobs(tokens, good[:2], 2)['passed']  # one entry short
    assert not logic.check_logprobs(tokens, [{5: -0.1}, {8: -0.3}, good[2]], 2)['passed']  # token missing
    assert not logic.check_logprobs(tokens, [{5: -3.0, 6: -0.1}, *good[1:]], 2)['passed']  # not the argmax
    assert not logic.check_logprobs(tokens, [*good[:2], {11: -0.01, 1: -1, 2: -2, 3: -3}], 2)['passed']  # too wide
    assert not logic.check_logprobs(tokens, [*good[:2], {11: 0.5}], 2)['passed']  # not a log-probability


def test_compare_outputs():
    L = 8
    exp = [[1, 2, 3, 4], [5, 6, 7], [8, 9]]
    same = logic.compare_outputs(exp, [list(e) for e in exp], [3, 3, 3], L)
    assert same['passed'] and same['identical'] == 3 and not same['differences']

    got = [[1, 2, 0, 4], [5, 6, 7, 7], [8, 9]]
    r = logic.compare_outputs(exp, got, [3, 13, 3], L, labels=['a', 'b', 'c'])
    assert not r['passed'] and r['identical'] == 1
    d = {x['request']: x for x in r['differences']}
    assert d['a']['position'] == 2 and d['a']['expected_token'] == 3 and d['a']['got_token'] == 0
    assert (d['a']['block'], d['a']['in_block']) == (0, 5)
    assert d['b']['position'] == 3 and d['b']['expected_token'] is None and d['b']['got_len'] == 4  # too long
    assert (d['b']['block'], d['b']['in_block']) == (1, 0)  # 13 + 3 = 16


def test_compare_outputs_partial_and_undecided():
    exp = [[1, 2, 3, 4], [5, 6, 7], [8]]
    ok = logic.compare_outputs(exp, [[1, 2], [5, 6, 7], [8]], [1, 1, 1], 4, partial=[True, False, False])
    assert ok['passed'] and ok['cancelled'] == 1 and ok['cancelled_prefix_ok'] == 1 and ok['sequences'] == 2
    bad = logic.compare_outputs(exp, [[1, 3], [5, 6, 7], [8]], [1, 1, 1], 4, partial=[True, False, False])
    assert not bad['passed'] and bad['differences'][0]['cancelled'] and bad['differences'][0]['position'] == 1
    undecided = logic.compare_outputs([None, [5]], [[1], [5]], [1, 1], 4)
    assert not undecided['passed'] and undecided['undecided'] == 1 and undecided['identical'] == 1
    with pytest.raises(ValueError):
        logic.compare_outputs([[1]], [[1], [2]], [1], 4)


# ---- staggered schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize('n', [1, 2, 3, 5, 16, 33])
def test_staggered_schedule_starts_everything(n):
    schedule = logic.staggered_schedule(n)
    assert sorted(s.request for s in schedule) == list(range(n))
    # a simulation: each request streams its first chunk 1 time unit after it starts; all must start
    started = {}
    for _ in range(n + 1):
        for s in schedule:
            if s.request in started:
                continue
            if s.after_first_chunk_of is None:
                started[s.request] = s.delay_s
            elif s.after_first_chunk_of in started:
                started[s.request] = started[s.after_first_chunk_of] + 1 + s.delay_s
    assert len(started) == n
    if n >= 4:  # every kind of start is there
        assert any(s.after_first_chunk_of is not None for s in schedule)
        assert any(s.after_first_chunk_of is None and s.delay_s > 0 for s in schedule)
        assert any(s.after_first_chunk_of is None and s.delay_s == 0 for s in schedule)


def test_check_schedule_rejects_bad_schedules():
    with pytest.raises(ValueError, match='once'):
        logic.check_schedule([Start(0), Start(0)], 2)
    with pytest.raises(ValueError, match='cycle'):
        logic.check_schedule([Start(0, 0, 1), Start(1, 0, 0)], 2)
    with pytest.raises(ValueError, match='cycle'):
        logic.check_schedule([Start(0, 0, 0)], 1)
    with pytest.raises(ValueError, match='unknown'):
        logic.check_schedule([Start(0, 0, 5)], 1)
    with pytest.raises(ValueError, match='negative'):
        logic.check_schedule([Start(0, -1.0)], 1)


def test_mixing_summary():
    timings = [dict(start=0.0, first_chunk=1.0, end=3.0),
               dict(start=0.5, first_chunk=1.5, end=2.0),  # starts while 0 is in its first block
               dict(start=1.2, first_chunk=None, end=1.3),  # starts after 0 streamed a chunk
               dict(start=5.0, first_chunk=6.0, end=7.0)]  # alone
    m = logic.mixing_summary(timings)
    assert m == dict(starts=4, starts_with_others_in_flight=2, starts_with_others_past_first_block=1,
                     max_in_flight_at_start=2)


# ---- summary -------------------------------------------------------------------------------------------


def test_table_and_overall():
    results = {'stock': {'baseline': dict(status='pass', sequences=16, identical=16),
                         'abort': dict(status='FAIL', sequences=18, identical=17,
                                       differences=[dict(position=40), dict(position=37)])},
               'delayed_fast': {'baseline': dict(status='error', error='boom'),
                                'prefix_caching': dict(status='pass', refused=True)}}
    table = logic.format_table(results, ['baseline', 'abort', 'prefix_caching'])
    lines = table.splitlines()
    assert lines[0].split() == ['case', 'stock', 'delayed_fast']
    assert lines[2].split() == ['baseline', 'pass', '16/16', 'error']
    assert lines[3].split() == ['abort', 'FAIL', '17/18', '@37', '-']
    assert lines[4].split() == ['prefix_caching', '-', 'pass']
    assert logic.overall_status(results) == 'FAIL'
    assert logic.overall_status({'a': {'x': dict(status='pass'), 'y': dict(status='skipped')}}) == 'pass'
    assert logic.overall_status({'a': {'y': dict(status='skipped')}}) == 'FAIL'  # nothing ran
    assert logic.case_cell(dict(status='FAIL', sequences=2, identical=1, undecided=1)) == 'FAIL 1/2 ?1'


# ---- prompt sets (the committed tiny model's tokenizer) ---------------------------------------------


@pytest.fixture(scope='module')
def encoder():
    from transformers import AutoTokenizer
    return prompts.Encoder(AutoTokenizer.from_pretrained(MODEL, trust_remote_code=True))


@pytest.fixture(scope='module')
def tasks():
    return prompts.load_task_prompts(TASKS)


def test_main_prompts(encoder, tasks):
    main = prompts.main_prompts(tasks, encoder, 12, 4)
    assert len(main) == 16 and len({p.ids for p in main}) == 16
    assert [i for i, p in enumerate(main) if p.kind == 'text'] == [0, 5, 10, 15]
    for group in range(4):  # each staggered group gets both kinds
        assert {p.kind for i, p in enumerate(main) if i % 4 == group} == {'task', 'text'}
    chat = [p for p in main if p.kind == 'task']
    assert all(p.ids[0] == 257 and p.ids[-1] == 10 for p in chat)  # <|im_start|> ... 'assistant\n'
    assert 258 not in main[0].ids  # text: no template
    assert len({len(p.ids) % 32 for p in main}) >= 8  # prompts end at many block positions


def test_long_prompts_need_chunks(encoder, tasks):
    long = prompts.long_prompts(tasks, encoder, min_tokens=2 * 128 + 8)
    assert len(long) == 8 and {p.kind for p in long} == {'task', 'text'}
    assert all(len(p.ids) >= 264 for p in long)
    assert len({len(p.ids) % 32 for p in long}) >= 6


def test_prefix_prompts_share_a_prefix(encoder, tasks):
    pre = prompts.prefix_prompts(tasks, encoder, min_shared_tokens=160)
    assert len({p.ids for p in pre}) == len(pre) == 8
    for a in pre:
        for b in pre:
            if a is b:
                continue
            shared = prompts.common_prefix_len(a.ids, b.ids)
            if a.kind == b.kind:
                assert 160 <= shared < min(len(a.ids), len(b.ids))
            else:
                assert shared == 0


def test_cut_and_renumber():
    assert prompts.cut_at_word('abc def ghi', 9) == 'abc def'
    assert prompts.cut_at_word('abc', 9) == 'abc'
    assert prompts.sub_questions('1) 85 + 218\n2) sort 12071') == ['85 + 218', 'sort 12071']
    assert prompts.numbered(['a', 'b']) == '1) a\n2) b'


# ---- the driver's engine configs (CPU: the configs only) --------------------------------------------


@pytest.fixture(scope='module')
def driver():
    spec = importlib.util.spec_from_file_location('serving_edge_check', os.path.join(CHECKS, 'serving_edge_check.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driver_configs(driver):
    from lmdeploy_focus.config.compat import check_engine_settings
    args = driver.parse_args([MODEL, '--out', '/tmp/x.json'])
    assert driver.resolve_block_length(args) == 32 and args.dtype == 'float32'
    for arm in driver.ARMS:
        config = driver.make_config(args, driver.engine_kwargs(args, arm, 32))
        assert config.dtype == 'float32' and config.dllm_block_length == 32 and not config.enable_prefix_caching
    focus = driver.make_config(args, driver.engine_kwargs(args, 'focus', 32, enable_prefix_caching=True))
    assert focus.focus_options().enable_delayed_cache and focus.enable_prefix_caching  # exact commit: allowed
    refused = driver.make_config
    from serving_edge.engine_cases import check_config_refused
    result = check_config_refused(
        lambda: refused(args, driver.engine_kwargs(args, 'delayed_fast', 32, enable_prefix_caching=True)),
        driver.PREFIX_FAST_MESSAGE)
    assert result['status'] == 'pass', result
    with pytest.raises(ValueError, match=driver.PREFIX_FAST_MESSAGE):
        check_engine_settings(quant_policy=0, tp=1, block_size=64, dllm_block_length=32, device_type='cuda',
                              enable_prefix_caching=True, delayed_cache_commit='fast')
    accepted = check_config_refused(lambda: None, 'x')
    assert accepted['status'] == 'FAIL' and not accepted['refused']


# ---- the whole driver against a fake engine (CPU) ------------------------------------------------------


class FakeEngine:
    """Streams like the PyTorch engine's instance API with upstream's DLLM output rules: a fixed greedy
    trajectory per prompt, output in whole blocks (one chunk per finished block, a few event-loop
    steps per block), cut by the engine's stop rule, CANCEL on ``async_cancel``; with prefix caching,
    ``req_metrics.cached_tokens`` counts whole 64-token pages shared with an earlier prompt.
    ``fault``: 'disturb_after_cancel' (requests running when another one is cancelled change later blocks),
    'ignore_stop_tokens' (only EOS ids stop, not a request's extra stop token), 'prefix_cache_corrupts',
    'sampling_leaks' (a greedy request batched with sampling ones changes, as upstream 0.18's interleaved
    per-request parameters would make it), 'logprobs_per_position' (each chunk carries L logprob entries
    of sampled ids, as upstream 0.18 sent them), 'processor_ends_loop' (a custom logits processor that raises
    ends every request with ENGINE_STOP_ERROR and the engine with them, as upstream 0.18's loop), 'history_padding' (a
    request with an n-gram filter that starts beside running requests stops at once, as upstream 0.18's padded
    history made it). ``min_new_tokens`` keeps stop tokens out of the first tokens. A sampling
    request follows its own seeded trajectory; with ``logprobs`` each token gets an entry whose argmax it is;
    a request whose logits processor raises ends with INTERNAL_ENGINE_ERROR and no tokens."""

    EOS = (256, 258)

    def __init__(self, config, fault=None, block_length=32, step_s=0.0005):
        self.engine_config = config
        self.fault = fault
        self.L = block_length
        self.step_s = step_s
        self.cancelled = set()
        self.active = set()
        self.disturbed = set()
        self.seen_prompts = []
        self.sampling = set()  # sessions of running sampling requests
        self.strategy_factory = object()
        self.loop_ended = False

    def start_loop(self):
        return True

    def close(self):
        pass

    def create_instance(self):
        return FakeInstance(self)

    @staticmethod
    def trajectory(ids, n):
        rng = random.Random(hash(tuple(ids)))
        return [rng.choice((258, 256)) if rng.random() < 0.02 else rng.randrange(32, 127) for _ in range(n)]

    def cached_tokens(self, ids):
        if not self.engine_config.enable_prefix_caching:
            return 0
        shared = max((prompts.common_prefix_len(ids, seen) for seen in self.seen_prompts), default=0)
        self.seen_prompts.append(tuple(ids))
        return (min(shared, len(ids) - 1) // 64) * 64


class FakeInstance:

    def __init__(self, engine):
        self.engine = engine

    async def async_cancel(self, session_id):
        self.engine.cancelled.add(session_id)
        self.engine.disturbed |= self.engine.active - {session_id}

    async def async_stream_infer(self, session_id, input_ids, gen_config):
        from lmdeploy.messages import EngineOutput, ResponseType
        e, L, P = self.engine, self.engine.L, len(input_ids)
        if e.fault == 'engine_stop_error' or e.loop_ended:
            yield EngineOutput(ResponseType.ENGINE_STOP_ERROR, [])
            return
        try:
            for processor in gen_config.logits_processors or ():
                processor([], torch.zeros(8))
        except Exception:  # noqa: BLE001
            e.loop_ended = e.fault == 'processor_ends_loop'
            yield EngineOutput(ResponseType.ENGINE_STOP_ERROR if e.loop_ended else ResponseType.INTERNAL_ENGINE_ERROR,
                               [])
            return
        stops = list(gen_config.stop_token_ids or [])
        if e.fault == 'ignore_stop_tokens':
            stops = [t for t in stops if t in FakeEngine.EOS]
        traj = FakeEngine.trajectory(input_ids, gen_config.max_new_tokens + 2 * L)
        if gen_config.do_sample:
            traj = FakeEngine.trajectory(list(input_ids) + [gen_config.random_seed], gen_config.max_new_tokens + 2 * L)
            e.sampling.add(session_id)
            if e.fault == 'history_padding' and gen_config.repetition_ngram_size and e.active:
                traj = [stops[0]] * len(traj)  # upstream 0.18: forced to its stop word beside longer histories
        elif e.fault == 'sampling_leaks' and e.sampling & e.active:
            traj = [t + 1 for t in traj]
        traj = [100 if i < (gen_config.min_new_tokens or 0) and t in stops else t for i, t in enumerate(traj)]
        cached = e.cached_tokens(input_ids)
        if e.fault == 'prefix_cache_corrupts' and cached:
            traj = [t + 1 for t in traj]
        out = logic.expected_output(traj, P, L, gen_config.max_new_tokens, stops)
        metrics = SimpleNamespace(cached_tokens=cached)
        block_end = (P // L + 1) * L - P  # output end of the first block
        e.active.add(session_id)
        try:
            async for response in self._blocks(session_id, out, metrics, block_end, gen_config.logprobs):
                yield response
        finally:
            e.active.discard(session_id)
            e.sampling.discard(session_id)

    async def _blocks(self, session_id, out, metrics, block_end, top=None):
        import asyncio
        from lmdeploy.messages import EngineOutput, ResponseType
        e, L, sent = self.engine, self.engine.L, 0
        while True:
            for _ in range(3):  # a few decode steps per block
                await asyncio.sleep(e.step_s)
                if session_id in e.cancelled:
                    yield EngineOutput(ResponseType.CANCEL, [], req_metrics=metrics)
                    return
                if e.loop_ended:
                    yield EngineOutput(ResponseType.ENGINE_STOP_ERROR, [])
                    return
            chunk = out[sent:block_end]
            if e.fault == 'disturb_after_cancel' and session_id in e.disturbed:
                chunk = [t + 1 for t in chunk]
            logprobs = None
            if top:
                logprobs = [{t: -0.25, t + 1: -1.5} for t in chunk]
                if e.fault == 'logprobs_per_position':
                    logprobs = [{t + 7: -0.5} for t in range(L)]
            sent = min(block_end, len(out))
            if sent >= len(out):
                yield EngineOutput(ResponseType.FINISH, chunk, logprobs=logprobs, req_metrics=metrics)
                return
            yield EngineOutput(ResponseType.SUCCESS, chunk, logprobs=logprobs, req_metrics=metrics)
            block_end += L


def run_driver_on_fake(driver, monkeypatch, tmp_path, fault=None, extra=()):
    import json

    from lmdeploy.pytorch.engine import Engine
    monkeypatch.setattr(Engine, 'from_pretrained',
                        classmethod(lambda cls, path, engine_config=None, **kw: FakeEngine(engine_config, fault)))
    out = tmp_path / 'edge.json'
    rc = driver.main([MODEL, '--out', str(out), '--case-timeout', '30', *extra])
    return rc, json.loads(out.read_text())


def test_driver_passes_a_correct_engine(driver, monkeypatch, tmp_path):
    rc, data = run_driver_on_fake(driver, monkeypatch, tmp_path)
    bad = {arm: {c: r.get('checks') or r.get('error') for c, r in entry['cases'].items() if r['status'] != 'pass'}
           for arm, entry in data['arms'].items()}
    assert rc == 0 and data['overall'] == 'pass', bad
    stock = data['arms']['stock']['cases']
    assert set(stock) == set(driver.CASES)
    assert stock['baseline']['identical'] == 16
    assert stock['max_new_tokens']['checks']['limited_requests_chosen']
    assert len(stock['stop_token']['stops']) == 3
    assert stock['abort']['cancelled'] >= 1 and stock['abort']['sequences'] > 14
    assert stock['staggered']['mixing']['starts_with_others_past_first_block'] > 0
    assert stock['mixed_sampling']['identical'] == 8 and len(stock['mixed_sampling']['sampled']) == 8
    assert stock['logprobs']['identical'] == 16 and stock['logprobs']['checks']['logprobs_match_tokens']
    broken = stock['broken_processor']
    assert broken['identical'] == 16 + 11 and len(broken['broken']) == 5  # 11 unbroken, then all 16 again
    own = stock['own_history']
    assert own['identical'] == 12 and not own['differing'] and len(own['own']) == 4 and all(own['checks'].values())
    assert max(stock['prefix_caching']['cached_tokens']['wave2']) >= 128
    assert data['arms']['delayed_fast']['cases']['prefix_caching']['refused']
    assert 'case' in data['table'] and data['gpu'] is None and data['lmdeploy'] == '0.18.0'


@pytest.mark.parametrize('fault, failing', [('disturb_after_cancel', {'abort'}),
                                            ('ignore_stop_tokens', {'stop_token'}),
                                            ('prefix_cache_corrupts', {'prefix_caching'}),
                                            ('sampling_leaks', {'mixed_sampling'}),
                                            ('logprobs_per_position', {'logprobs'}),
                                            ('history_padding', {'own_history'}),
                                            # the dead engine's later cases fail too
                                            ('processor_ends_loop', {'broken_processor', 'own_history',
                                                                     'chunked_prefill',
                                                                     'prefix_caching'})])
def test_driver_catches_a_faulty_engine(driver, monkeypatch, tmp_path, fault, failing):
    rc, data = run_driver_on_fake(driver, monkeypatch, tmp_path, fault, ['--arms', 'stock', 'delayed_fast'])
    assert rc == 1 and data['overall'] == 'FAIL'
    failed = {c for c, r in data['arms']['stock']['cases'].items() if r['status'] != 'pass'}
    assert failed == failing
    assert data['arms']['delayed_fast']['cases']['prefix_caching']['status'] == 'pass'  # refused at config time


def test_driver_stops_using_a_broken_engine(driver, monkeypatch, tmp_path):
    """Engine errors in the baseline: the baseline is an error naming them, the engine's other cases are
    skipped (not run against a broken engine), no other engine is built for the arm."""
    rc, data = run_driver_on_fake(driver, monkeypatch, tmp_path, 'engine_stop_error', ['--arms', 'delayed_exact'])
    cases = data['arms']['delayed_exact']['cases']
    assert rc == 1 and cases['baseline']['status'] == 'error'
    assert 'ENGINE_STOP_ERROR' in cases['baseline']['error']
    assert {c: r['status'] for c, r in cases.items() if c != 'baseline'} == {
        c: 'skipped' for c in driver.CASES if c != 'baseline'}
    assert set(data['arms']['delayed_exact']['engines']) == {'main'}
