"""The serving edge cases against an in-process LMDeploy PyTorch engine (GPU; the engine runs in
this process, as ``benchmark/quality/engine_backend.py``).

Requests go through ``EngineInstance.async_stream_infer`` with token-id prompts, one instance per
request; cancels go through a separate control instance (``async_cancel``, upstream's
``STOP_SESSION``). Greedy as the quality evaluation (``do_sample=False, top_k=1``), no chat-side
processing: ``stop_token_ids`` are exactly what a request lists (the engine instance adds no EOS),
and the returned ids include the stop token. Each case returns a result dict (see
``logic.compare_outputs``) with ``status`` pass / FAIL.
"""
import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field

from . import logic
from .logic import FAIL, PASS

_session_ids = itertools.count(1)


class EngineBroken(RuntimeError):
    """Requests came back with engine errors: later requests on this engine would mean little (or hang)."""


@dataclass
class Request:
    prompt: object  # prompts.PromptSpec
    max_new_tokens: int
    stop_ids: tuple = ()
    label: str = ''
    sampling: dict | None = None  # GenerationConfig sampling fields (do_sample=True); None: greedy
    logprobs: int | None = None  # GenerationConfig.logprobs (top entries per token)
    processors: list | None = None  # GenerationConfig.logits_processors


@dataclass
class Outcome:
    tokens: list = field(default_factory=list)
    status: str = 'none'  # last ResponseType name, or 'exception'
    chunks: int = 0
    cached_tokens: int = 0  # the largest req_metrics.cached_tokens seen
    start: float = 0.0
    first_chunk: float | None = None
    end: float = 0.0
    cancel_sent_at_tokens: int | None = None  # tokens received when the cancel was sent
    error: str | None = None
    logprobs: list = field(default_factory=list)  # one {token_id: logprob} per token, when asked


class Runner:
    """Streams requests through one engine and records what came back."""

    def __init__(self, engine, block_length: int, seed: int = 0):
        self.engine = engine
        self.block_length = block_length
        self.seed = seed
        self.control = engine.create_instance()  # for cancels, never streaming
        self.clock0 = time.perf_counter()

    def gen_config(self, request: Request):
        from lmdeploy.messages import GenerationConfig
        sampling = dict(do_sample=False, top_k=1, random_seed=self.seed)
        if request.sampling is not None:
            sampling = dict(do_sample=True, **request.sampling)
        return GenerationConfig(max_new_tokens=request.max_new_tokens, ignore_eos=False,
                                stop_token_ids=list(request.stop_ids) or None, logprobs=request.logprobs,
                                logits_processors=request.processors, **sampling)

    def now(self) -> float:
        return time.perf_counter() - self.clock0

    async def stream(self, request: Request, session_id: int | None = None, first_chunk: asyncio.Event | None = None,
                     outcome: Outcome | None = None) -> Outcome:
        from lmdeploy.messages import ResponseType
        ok = (ResponseType.SUCCESS, ResponseType.FINISH, ResponseType.CANCEL)
        session_id = next(_session_ids) if session_id is None else session_id
        outcome = outcome or Outcome()
        outcome.start = self.now()
        instance = self.engine.create_instance()
        ids, gen_config = list(request.prompt.ids), self.gen_config(request)
        try:
            # aclosing: the instance's own cleanup (ending the session) runs now, also after a break
            async with contextlib.aclosing(instance.async_stream_infer(session_id, ids, gen_config)) as responses:
                async for out in responses:
                    outcome.status = out.status.name
                    if out.status not in ok:
                        outcome.error = f'response {out.status.name}'
                        break
                    outcome.tokens.extend(out.token_ids)
                    outcome.logprobs.extend(getattr(out, 'logprobs', None) or [])
                    metrics = getattr(out, 'req_metrics', None)
                    if metrics is not None:
                        cached = int(getattr(metrics, 'cached_tokens', 0) or 0)
                        outcome.cached_tokens = max(outcome.cached_tokens, cached)
                    if out.token_ids:
                        outcome.chunks += 1
                        if outcome.first_chunk is None:
                            outcome.first_chunk = self.now()
                            if first_chunk is not None:
                                first_chunk.set()
        except Exception as e:  # noqa: BLE001  recorded; the other requests go on
            outcome.status, outcome.error = 'exception', f'{type(e).__name__}: {e}'
        finally:
            outcome.end = self.now()
            if first_chunk is not None:
                first_chunk.set()  # nobody waits forever on a request that ended without output
        return outcome

    async def batch(self, requests: list[Request]) -> list[Outcome]:
        """All requests submitted together (one event-loop tick)."""
        return list(await asyncio.gather(*(self.stream(r) for r in requests)))

    async def cancel(self, session_id: int) -> None:
        await self.control.async_cancel(session_id)


# ---- helpers ----------------------------------------------------------------------------------------


def expected_for(trajectories: dict, requests: list[Request], block_length: int) -> list:
    return [logic.expected_output(trajectories[r.prompt.label], len(r.prompt.ids), block_length, r.max_new_tokens,
                                  r.stop_ids) for r in requests]


def outcome_record(request: Request, outcome: Outcome, block_length: int) -> dict:
    prompt_len = len(request.prompt.ids)
    end_block = logic.block_position(prompt_len, len(outcome.tokens) - 1, block_length) if outcome.tokens else None
    return dict(request=request.label or request.prompt.label, prompt=request.prompt.label, prompt_len=prompt_len,
                max_new_tokens=request.max_new_tokens, stop_ids=list(request.stop_ids), status=outcome.status,
                tokens=len(outcome.tokens), last_token_block=end_block, chunks=outcome.chunks,
                cached_tokens=outcome.cached_tokens, error=outcome.error,
                **({'cancel_sent_at_tokens': outcome.cancel_sent_at_tokens}
                   if outcome.cancel_sent_at_tokens is not None else {}))


def judged(requests: list[Request], outcomes: list[Outcome], expected: list, block_length: int,
           partial: list | None = None, extra_checks: dict | None = None, **extra) -> dict:
    """Comparison + failed responses + named extra checks (name -> bool) -> a case result."""
    result = logic.compare_outputs(expected, [o.tokens for o in outcomes], [len(r.prompt.ids) for r in requests],
                                   block_length, labels=[r.label or r.prompt.label for r in requests], partial=partial)
    partial = partial or [False] * len(requests)
    bad_status = [r.label or r.prompt.label for r, o, p in zip(requests, outcomes, partial)
                  if o.error is not None or (not p and o.status != 'FINISH')]
    checks = dict(extra_checks or {})
    checks['all_responses_ok'] = not bad_status
    passed = result.pop('passed') and all(checks.values())
    return dict(status=PASS if passed else FAIL, **result, checks=checks,
                **({'bad_responses': bad_status} if bad_status else {}),
                requests=[outcome_record(r, o, block_length) for r, o in zip(requests, outcomes)], **extra)


# ---- cases on the arm's main engine ---------------------------------------------------------------


async def case_baseline(runner: Runner, prompts: list, max_new_tokens: int) -> tuple[dict, dict]:
    """Every prompt at once, no stop token: the trajectories. Run twice; the repeat must be identical
    (otherwise batch-identical runs are not deterministic and later differences mean little)."""
    requests = [Request(p, max_new_tokens, (), p.label) for p in prompts]
    first = await runner.batch(requests)
    broken = [f'{r.prompt.label}: {o.error}' for r, o in zip(requests, first) if o.error is not None]
    if broken:
        raise EngineBroken(f'{len(broken)} of {len(requests)} baseline requests failed (the engine log has the cause): '
                           + '; '.join(broken[:3]))
    repeat = await runner.batch(requests)
    trajectories = {r.prompt.label: o.tokens for r, o in zip(requests, first)}
    full_length = all(len(o.tokens) == max_new_tokens for o in first)
    result = judged(requests, repeat, [o.tokens for o in first], runner.block_length,
                    extra_checks=dict(first_run_full_length=full_length,
                                      first_run_responses_ok=all(o.status == 'FINISH' for o in first)))
    result['note'] = 'repeat of the same batch against the first run (the trajectories)'
    return result, trajectories


async def case_max_new_tokens(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, stop_ids: tuple,
                              targets=(logic.FIRST_BLOCK, 40, 75)) -> dict:
    """Three requests with max_new_tokens ending mid-block (inside the prompt's last block, after one
    commit, after two), the rest at full length, all in one batch; serving stop ids (EOS) everywhere."""
    L = runner.block_length
    chosen = logic.choose_length_limits([(p.label, p.kind, len(p.ids)) for p in prompts], trajectories, L, targets,
                                        stop_ids)
    requests = [Request(p, chosen.get(p.label, max_new_tokens), stop_ids,
                        f'{p.label}:max{chosen[p.label]}' if p.label in chosen else p.label) for p in prompts]
    outcomes = await runner.batch(requests)
    lengths_ok = all(len(o.tokens) == r.max_new_tokens for r, o in zip(requests, outcomes) if r.prompt.label in chosen)
    return judged(requests, outcomes, expected_for(trajectories, requests, L), L,
                  extra_checks=dict(limited_requests_chosen=len(chosen) == len(targets),
                                    limited_outputs_exact_length=lengths_ok),
                  limited={k: dict(max_new_tokens=v, in_block=logic.block_position(
                      len(next(p for p in prompts if p.label == k).ids), v - 1, L)) for k, v in chosen.items()})


async def case_stop_token(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, stop_ids: tuple,
                          count: int = 3) -> dict:
    """For ``count`` requests, a token of their trajectory whose first checked occurrence is mid-block
    becomes an extra stop token; the output must end right after it (stop token included)."""
    L = runner.block_length
    choices = {p.label: logic.choose_mid_block_stop(trajectories[p.label], len(p.ids), L, max_new_tokens, stop_ids)
               for p in prompts}
    tasks = [p.label for p in prompts if p.kind == 'task' and choices[p.label] is not None]
    texts = [p.label for p in prompts if p.kind == 'text' and choices[p.label] is not None]
    chosen = {label: choices[label] for label in (texts[:1] + tasks + texts[1:])[:count]}  # one text if any
    requests = []
    for p in prompts:
        if p.label in chosen:
            c = chosen[p.label]
            requests.append(Request(p, max_new_tokens, tuple(stop_ids) + (c.token, ), f'{p.label}:stop{c.token}'))
        else:
            requests.append(Request(p, max_new_tokens, stop_ids, p.label))
    outcomes = await runner.batch(requests)
    ends_on_token = all(o.tokens and o.tokens[-1] == chosen[r.prompt.label].token
                        for r, o in zip(requests, outcomes) if r.prompt.label in chosen)
    return judged(requests, outcomes, expected_for(trajectories, requests, L), L,
                  extra_checks=dict(stop_requests_chosen=len(chosen) == count, stopped_on_the_token=ends_on_token),
                  stops={k: dict(token=c.token, expected_len=c.length, block=c.block, in_block=c.in_block)
                         for k, c in chosen.items()})


async def case_abort(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, stop_ids: tuple) -> dict:
    """All prompts streamed at once; victim A (a text prompt: about one token per step, so many steps
    per block) is cancelled right after its own first chunk (the cancel lands during its commit step
    or mid-way through its second block), victim B (a task) when any other request's first chunk
    arrives (B is then in its first block or at its commit). The others must be unchanged, the
    victims' partial outputs prefixes of theirs, at least one victim must end CANCEL (a victim that
    finished before its cancel landed is compared in full); afterwards the victims and two others
    run again on the same engine and must equal their expected outputs."""
    L = runner.block_length
    requests = [Request(p, max_new_tokens, stop_ids, p.label) for p in prompts]
    texts = [i for i, p in enumerate(prompts) if p.kind == 'text']
    tasks = [i for i, p in enumerate(prompts) if p.kind == 'task']
    victim_a = (texts or tasks)[0]
    victim_b = next(i for i in tasks + texts if i != victim_a)
    sessions = [next(_session_ids) for _ in requests]
    outcomes = [Outcome() for _ in requests]
    own_first = [asyncio.Event() for _ in requests]
    any_other_first = asyncio.Event()

    async def watch_others():
        waits = [asyncio.create_task(e.wait()) for i, e in enumerate(own_first) if i != victim_b]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        any_other_first.set()

    async def cancel_when(index: int, event: asyncio.Event):
        await event.wait()
        outcomes[index].cancel_sent_at_tokens = len(outcomes[index].tokens)
        await runner.cancel(sessions[index])

    streams = [runner.stream(r, sessions[i], own_first[i], outcomes[i]) for i, r in enumerate(requests)]
    await asyncio.gather(*streams, watch_others(), cancel_when(victim_a, own_first[victim_a]),
                         cancel_when(victim_b, any_other_first))
    victims = {victim_a, victim_b}
    # a victim that finished before its cancel landed is compared in full
    partial = [i in victims and outcomes[i].status == 'CANCEL' for i in range(len(requests))]
    expected = expected_for(trajectories, requests, L)
    after_idx = [victim_a, victim_b] + [i for i in range(len(requests)) if i not in victims][:2]
    after_requests = [Request(prompts[i], max_new_tokens, stop_ids, f'{prompts[i].label}:after') for i in after_idx]
    after = await runner.batch(after_requests)
    expected += expected_for(trajectories, after_requests, L)
    result = judged(requests + after_requests, outcomes + after, expected, L, partial=partial + [False] * len(after),
                    extra_checks=dict(a_victim_cancelled=any(outcomes[i].status == 'CANCEL' for i in victims)),
                    victims={prompts[i].label: dict(status=outcomes[i].status, tokens_received=len(outcomes[i].tokens),
                                                   cancel_sent_at_tokens=outcomes[i].cancel_sent_at_tokens)
                             for i in sorted(victims)})
    return result


async def case_staggered(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, stop_ids: tuple,
                         step_s: float = 0.004) -> dict:
    """Staggered arrivals (``logic.staggered_schedule``): batches mix prefill, warm-up, mid-block and
    commit steps of different sequences; every output must equal its expected output."""
    L = runner.block_length
    requests = [Request(p, max_new_tokens, stop_ids, p.label) for p in prompts]
    schedule = logic.staggered_schedule(len(requests), step_s)
    first = [asyncio.Event() for _ in requests]
    outcomes = [Outcome() for _ in requests]

    async def start(s: logic.Start):
        if s.after_first_chunk_of is not None:
            await first[s.after_first_chunk_of].wait()
        if s.delay_s:
            await asyncio.sleep(s.delay_s)
        await runner.stream(requests[s.request], None, first[s.request], outcomes[s.request])

    await asyncio.gather(*(start(s) for s in schedule))
    mixing = logic.mixing_summary([dict(start=o.start, first_chunk=o.first_chunk, end=o.end) for o in outcomes])
    return judged(requests, outcomes, expected_for(trajectories, requests, L), L,
                  extra_checks=dict(batches_mixed=mixing['starts_with_others_past_first_block'] > 0),
                  mixing=mixing, schedule=[vars(s) for s in schedule])


async def case_mixed_sampling(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int,
                              stop_ids: tuple) -> dict:
    """Every other request samples (its own temperature, top-k, top-p, min-p, repetition penalty,
    seed and min_new_tokens); the greedy ones must equal their trajectories: a neighbour's sampling
    parameters must not reach a request's block rows (upstream 0.18 interleaved them). The sampled
    ones must end normally (FINISH, 1..N tokens)."""
    L = runner.block_length
    requests = []
    for i, p in enumerate(prompts):
        if i % 2:
            sampling = dict(temperature=0.6 + 0.1 * (i % 9), top_k=8 + i, top_p=0.8 + 0.01 * (i % 10), min_p=0.02,
                            repetition_penalty=1.1, random_seed=1000 + i, min_new_tokens=L // 2)
            requests.append(Request(p, max_new_tokens, stop_ids, f'{p.label}:sampled', sampling))
        else:
            requests.append(Request(p, max_new_tokens, stop_ids, p.label))
    outcomes = await runner.batch(requests)
    greedy = [i for i, r in enumerate(requests) if r.sampling is None]
    sampled = [i for i, r in enumerate(requests) if r.sampling is not None]
    sampled_ok = all(outcomes[i].status == 'FINISH' and outcomes[i].error is None
                     and 0 < len(outcomes[i].tokens) <= max_new_tokens for i in sampled)
    picked = [requests[i] for i in greedy]
    return judged(picked, [outcomes[i] for i in greedy], expected_for(trajectories, picked, L), L,
                  extra_checks=dict(sampled_requests_ended_normally=sampled_ok),
                  sampled=[dict(outcome_record(requests[i], outcomes[i], L), sampling=requests[i].sampling)
                           for i in sampled])


async def case_own_history(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int,
                           stop_ids: tuple) -> dict:
    """Greedy requests with an n-gram filter, a repetition penalty or ``min_new_tokens`` must give, next to
    neighbours that are a block or more ahead, what each gives alone (upstream 0.18 read a short history's padding
    as tokens: such a first-block request with the n-gram filter answered nothing, a penalised one's stop moved);
    the neighbours must equal their trajectories. ``min_new_tokens`` is checked as a lower bound only: upstream's
    per-block ban gives the same output alone and beside others, so its per-position rule is held by the CPU tests
    (tests/test_own_history.py), not here."""
    L = runner.block_length
    settings = (dict(repetition_ngram_size=3, repetition_ngram_threshold=3), dict(repetition_penalty=1.3),
                dict(min_new_tokens=L // 2 + 1), dict(repetition_ngram_size=2, repetition_ngram_threshold=4,
                                                      repetition_penalty=0.9))
    own = [Request(p, max_new_tokens, stop_ids, f'{p.label}:own{i}', dict(top_k=1, temperature=1.0, **settings[i]))
           for i, p in enumerate(prompts[:len(settings)])]
    alone = [(await runner.batch([r]))[0] for r in own]
    others = [Request(p, max_new_tokens, stop_ids, p.label) for p in prompts[len(settings):]]
    first = [asyncio.Event() for _ in others]
    other_outcomes = [Outcome() for _ in others]
    own_outcomes = [Outcome() for _ in own]

    async def own_after_the_others_first_block():
        await asyncio.gather(*(e.wait() for e in first))
        await asyncio.gather(*(runner.stream(r, None, None, o) for r, o in zip(own, own_outcomes)))

    await asyncio.gather(*(runner.stream(r, None, e, o) for r, e, o in zip(others, first, other_outcomes)),
                         own_after_the_others_first_block())
    differ_from_alone = [r.label for r, a, b in zip(own, alone, own_outcomes)
                     if a.tokens != b.tokens or b.status != a.status]
    joined_late = all(o.start > max(x.first_chunk or 0 for x in other_outcomes) for o in own_outcomes)
    min_new_ok = all(len(o.tokens) >= r.sampling.get('min_new_tokens', 0) or o.status != 'FINISH'
                     for r, o in zip(own, own_outcomes))
    return judged(others, other_outcomes, expected_for(trajectories, others, L), L,
                  extra_checks=dict(own_history_requests_equal_their_solo_outputs=not differ_from_alone,
                                    own_requests_joined_neighbours_a_block_ahead=joined_late,
                                    min_new_tokens_met=min_new_ok),
                  own=[dict(outcome_record(r, o, L), alone_tokens=len(a.tokens), sampling=r.sampling)
                       for r, o, a in zip(own, own_outcomes, alone)],
                  differing=differ_from_alone)


async def case_logprobs(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int,
                        stop_ids: tuple) -> dict:
    """Every other request asks for logprobs (top 3; the engine runs with ``logprobs_mode``): one entry
    per returned token, naming it, the token the entry's argmax (greedy); and every output, with or
    without logprobs, equals its trajectory (upstream 0.18 sent the sampled ids of all L positions of
    every step with output instead)."""
    L, top = runner.block_length, 3
    requests = [Request(p, max_new_tokens, stop_ids, f'{p.label}:logprobs' if i % 2 else p.label,
                        logprobs=top if i % 2 else None) for i, p in enumerate(prompts)]
    outcomes = await runner.batch(requests)
    checked = {r.label: logic.check_logprobs(o.tokens, o.logprobs, top)
               for r, o in zip(requests, outcomes) if r.logprobs is not None}
    others_clean = all(not o.logprobs for r, o in zip(requests, outcomes) if r.logprobs is None)
    return judged(requests, outcomes, expected_for(trajectories, requests, L), L,
                  extra_checks=dict(logprobs_match_tokens=all(c['passed'] for c in checked.values()),
                                    no_logprobs_unasked=others_clean),
                  logprobs={k: v for k, v in checked.items() if not v['passed']})


def _broken_processor(token_ids, scores):
    raise ValueError('a logits processor that always raises (serving edge check)')


async def case_broken_processor(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int,
                                stop_ids: tuple) -> dict:
    """Every third request carries a custom logits processor that raises: those requests end with
    INTERNAL_ENGINE_ERROR and no tokens, every other output equals its trajectory, and the engine goes on
    (the same prompts again, all greedy, equal their trajectories). Upstream 0.18: the exception ends the
    engine loop and every request with it."""
    L = runner.block_length
    requests = [Request(p, max_new_tokens, stop_ids, f'{p.label}:broken' if i % 3 == 1 else p.label,
                        processors=[_broken_processor] if i % 3 == 1 else None) for i, p in enumerate(prompts)]
    outcomes = await runner.batch(requests)
    broken = [i for i, r in enumerate(requests) if r.processors]
    broken_failed = all(outcomes[i].status == 'INTERNAL_ENGINE_ERROR' and not outcomes[i].tokens for i in broken)
    kept = [i for i, r in enumerate(requests) if not r.processors]
    again = [Request(p, max_new_tokens, stop_ids, f'{p.label}:after') for p in prompts]
    after = await runner.batch(again)
    picked = [requests[i] for i in kept] + again
    return judged(picked, [outcomes[i] for i in kept] + after, expected_for(trajectories, picked, L), L,
                  extra_checks=dict(broken_requests_failed_alone=broken_failed),
                  broken=[outcome_record(requests[i], outcomes[i], L) for i in broken])


# ---- cases on their own engines -----------------------------------------------------------------


async def case_same_as(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, **extra) -> dict:
    """All prompts at once, no stop token; outputs must equal ``trajectories`` (another engine's)."""
    requests = [Request(p, max_new_tokens, (), p.label) for p in prompts]
    outcomes = await runner.batch(requests)
    return judged(requests, outcomes, [trajectories[p.label] for p in prompts], runner.block_length, **extra)


async def case_prefix_caching(runner: Runner, prompts: list, trajectories: dict, max_new_tokens: int, **extra) -> dict:
    """Wave 1: the first half of the shared-prefix prompts; wave 2 (after wave 1 finished): the second
    half plus the first two of wave 1 again. Every output must equal the no-prefix-cache engine's;
    wave 2 must report cached prompt tokens (``req_metrics.cached_tokens``)."""
    half = len(prompts) // 2
    wave1 = [Request(p, max_new_tokens, (), f'{p.label}:w1') for p in prompts[:half]]
    wave2 = [Request(p, max_new_tokens, (), f'{p.label}:w2') for p in prompts[half:] + prompts[:2]]
    out1 = await runner.batch(wave1)
    out2 = await runner.batch(wave2)
    requests, outcomes = wave1 + wave2, out1 + out2
    hits = [o.cached_tokens for o in out2]
    return judged(requests, outcomes, [trajectories[r.prompt.label] for r in requests], runner.block_length,
                  extra_checks=dict(wave2_reports_cached_tokens=any(h > 0 for h in hits)),
                  cached_tokens=dict(wave1=[o.cached_tokens for o in out1], wave2=hits), **extra)


def check_config_refused(make_config, expect_in_message: str) -> dict:
    """A configuration that must be refused with a ValueError naming ``expect_in_message``."""
    try:
        make_config()
    except ValueError as e:
        message = str(e)
        ok = expect_in_message in message
        return dict(status=PASS if ok else FAIL, refused=True, message=message,
                    checks=dict(value_error=True, message_names_option=ok))
    except Exception as e:  # noqa: BLE001
        return dict(status=FAIL, refused=True, message=f'{type(e).__name__}: {e}',
                    checks=dict(value_error=False))
    return dict(status=FAIL, refused=False, checks=dict(value_error=False),
                message='the configuration was accepted')
