"""Pure logic of the serving edge-case check: expected outputs, case choices, comparison, summary.

Every expected output is derived from one *trajectory* per prompt: the engine's greedy output with
no stop token and ``max_new_tokens = N`` (case ``baseline``). In a block-diffusion engine neither
``max_new_tokens`` nor a stop token changes how a block is decoded: the whole block is decoded,
then the output is cut. So the output of any request is the trajectory cut by the plugin's DLLM
stop rule (upstream's ``DLLMStoppingCriteria`` + ``SchedulerSequenceDLLM.set_stop_pos`` with the
fixes in ``lmdeploy_focus/strategies/dllm/upstream_fixes/``; the engine builds them for every arm,
stock included), as long as the cut falls inside the known trajectory:

* a block's tokens are checked once the whole block is unmasked, from the prompt's end on (prompt
  tokens in the same block are not);
* the length budget starts at ``max_new_tokens + prompt_len % L`` and drops by ``L`` per finished
  block; when it reaches <= 0 the output ends at position ``L - 1 + budget`` of that block, unless
  a stop token comes earlier in it;
* the first stop token ends the output, the stop token included (the engine instance's token ids;
  ``AsyncEngine`` / ``pipeline`` strip it from the text later).

(Upstream 0.18 alone differs in two places: it skips the whole block that holds the prompt's end,
and lets the length cut win over an earlier stop token of the same block.)

Positions: output position ``i`` of a prompt of length ``P`` is absolute position ``P + i``; its
block index counts from the first block that holds output (0) and its in-block index is
``(P + i) % L``.
"""
from dataclasses import dataclass

from lmdeploy_focus_dev.reference.dllm_decode import StopRule

# ---- positions -----------------------------------------------------------------------------------


def block_position(prompt_len: int, out_pos: int, block_length: int) -> tuple[int, int]:
    """(output block index, index inside the block) of output position ``out_pos``."""
    absolute = prompt_len + out_pos
    return absolute // block_length - prompt_len // block_length, absolute % block_length


def is_mid_block(prompt_len: int, out_pos: int, block_length: int, margin: int = 2) -> bool:
    """True when output position ``out_pos`` is at least ``margin`` positions away from both ends of its
    block (so a cut after it leaves block tokens on both sides)."""
    _, in_block = block_position(prompt_len, out_pos, block_length)
    return margin <= in_block <= block_length - 1 - margin


# ---- expected outputs ----------------------------------------------------------------------------


def expected_output(trajectory: list, prompt_len: int, block_length: int, max_new_tokens: int,
                    stop_ids=()) -> list | None:
    """The output the plugin's DLLM stop rule gives for ``trajectory`` (see the module doc), or None
    when it depends on tokens past the end of the trajectory."""
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    L, P = block_length, prompt_len
    known_end = P + len(trajectory)  # absolute end of the known tokens
    rule = StopRule(L, P, max_new_tokens + P % L, P, frozenset(stop_ids or ()))
    block_start = (P // L) * L
    while True:
        # the prompt's ids are never checked and unknown ids never match: both None
        ids = [trajectory[pos - P] if P <= pos < known_end else None for pos in range(block_start, block_start + L)]
        stopped = rule.after_step(block_start, ids, block_unmasked=True)
        unknown = known_end if known_end < block_start + L else None  # first unknown position of the block
        if stopped:
            # an unknown token before the end could have been a stop token (or the end is unknown)
            return None if unknown is not None and unknown < rule.valid_end else list(trajectory[:rule.valid_end - P])
        if unknown is not None:
            return None
        block_start += L


# ---- case choices --------------------------------------------------------------------------------


def choose_mid_block_length(trajectory: list, prompt_len: int, block_length: int, target: int, stop_ids=(),
                            margin: int = 2) -> int | None:
    """A ``max_new_tokens`` near ``target`` whose last output token lies mid-block and whose output is
    the trajectory's first ``n`` tokens holding none of ``stop_ids`` (so it is cut by the length alone,
    not ended by EOS, nor holding an EOS that the length cut of the same block overrides); None if none."""
    stop_ids = frozenset(stop_ids or ())
    best = None
    for n in range(1, len(trajectory) + 1):
        if trajectory[n - 1] in stop_ids:
            break  # every longer output holds this stop token
        if not is_mid_block(prompt_len, n - 1, block_length, margin):
            continue
        if expected_output(trajectory, prompt_len, block_length, n, stop_ids) != list(trajectory[:n]):
            continue
        key = (abs(n - target), n)
        if best is None or key < best[0]:
            best = (key, n)
    return None if best is None else best[1]


FIRST_BLOCK = 'first_block'  # a length target: the middle of the first output block (the prompt's last block)


def choose_length_limits(candidates: list, trajectories: dict, block_length: int, targets, stop_ids=(),
                         margin: int = 2) -> dict:
    """``max_new_tokens`` per prompt label for the mid-block length case: one prompt per target, each a
    different one, kinds alternating task / text where possible. ``candidates``: (label, kind,
    prompt_len) in preference order. A target is an output length or ``FIRST_BLOCK``; the choice is
    ``choose_mid_block_length``'s and must lie within ``L // 2`` of the target (``FIRST_BLOCK``: in
    the first output block). Targets no prompt fits are left out."""
    L = block_length
    chosen = {}
    for k, target in enumerate(targets):
        kind = 'task' if k % 2 == 0 else 'text'
        for label, cand_kind, prompt_len in sorted(candidates, key=lambda c: c[1] != kind):
            if label in chosen:
                continue
            first_block = target == FIRST_BLOCK
            goal = max(1, (L - prompt_len % L) // 2) if first_block else target
            n = choose_mid_block_length(trajectories[label], prompt_len, L, goal, stop_ids, margin)
            if n is None or abs(n - goal) > L // 2:
                continue
            if first_block and block_position(prompt_len, n - 1, L)[0] != 0:
                continue
            chosen[label] = n
            break
    return chosen


@dataclass(frozen=True)
class StopChoice:
    token: int  # the extra stop token id
    length: int  # expected output length (the stop token is its last token)
    block: int  # output block index of the stop position
    in_block: int  # index inside the block


def choose_mid_block_stop(trajectory: list, prompt_len: int, block_length: int, max_new_tokens: int,
                          other_stop_ids=(), margin: int = 2, exclude=()) -> StopChoice | None:
    """A token of the trajectory that, added to ``other_stop_ids``, ends the output at a mid-block
    position *because of that token* (not the length cut, not another stop token).

    Preference: a block after the first output block (the stop then follows a commit), then the
    position nearest the middle of its block, then the smaller token id. None if no token fits."""
    other = frozenset(other_stop_ids or ())
    plain = expected_output(trajectory, prompt_len, block_length, max_new_tokens, other)
    best = None
    for token in sorted(set(trajectory) - other - set(exclude)):
        out = expected_output(trajectory, prompt_len, block_length, max_new_tokens, other | {token})
        if out is None or not out or out[-1] != token:
            continue
        if plain is not None and len(out) >= len(plain):
            continue  # the length cut or another stop token decides, not this token
        pos = len(out) - 1
        if not is_mid_block(prompt_len, pos, block_length, margin):
            continue
        block, in_block = block_position(prompt_len, pos, block_length)
        key = (block == 0, abs(in_block - (block_length - 1) / 2), token)
        if best is None or key < best[0]:
            best = (key, StopChoice(token, len(out), block, in_block))
    return None if best is None else best[1]


# ---- staggered starts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """When a request of the staggered case starts: ``delay_s`` after the trigger, the trigger being the
    start of the case (``after_first_chunk_of`` None) or the first streamed chunk of another request
    (that request has just finished a block, so it is at its commit step)."""
    request: int
    delay_s: float = 0.0
    after_first_chunk_of: int | None = None


def staggered_schedule(num_requests: int, step_s: float = 0.004) -> list[Start]:
    """Four interleaved groups by ``request % 4``: 0 start at once; 1 start on the first chunk of the
    previous request (group 0, at its commit step); 2 start at growing small delays (arrivals during
    warm-up / mid-block steps of the others); 3 start on the first chunk of the group-1 request two
    before (itself a late starter), so the arrivals keep overlapping every phase."""
    schedule = []
    for i in range(num_requests):
        group, wave = i % 4, i // 4
        if group == 0:
            schedule.append(Start(i))
        elif group == 1:
            schedule.append(Start(i, 0.0, i - 1))
        elif group == 2:
            schedule.append(Start(i, step_s * (wave + 1)))
        else:
            schedule.append(Start(i, step_s * wave, i - 2))
    check_schedule(schedule, num_requests)
    return schedule


def check_schedule(schedule: list[Start], num_requests: int) -> None:
    """Every request exactly once, triggers only on requests that start earlier in the chain (no
    cycle, so no request waits forever); raises ValueError otherwise."""
    requests = [s.request for s in schedule]
    if sorted(requests) != list(range(num_requests)):
        raise ValueError(f'schedule must start each of {num_requests} requests once, got {requests}')
    by_request = {s.request: s for s in schedule}
    for s in schedule:
        seen, current = {s.request}, s
        while current.after_first_chunk_of is not None:
            nxt = current.after_first_chunk_of
            if nxt not in by_request:
                raise ValueError(f'request {current.request} waits for unknown request {nxt}')
            if nxt in seen:
                raise ValueError(f'request {s.request}: trigger cycle through {sorted(seen)}')
            seen.add(nxt)
            current = by_request[nxt]
        if s.delay_s < 0:
            raise ValueError(f'request {s.request}: negative delay {s.delay_s}')


def mixing_summary(timings: list[dict]) -> dict:
    """How mixed the batches were: for each request start, the other requests in flight and those
    already past their first block (streamed a chunk, not finished). ``timings``: per request
    ``start``, ``first_chunk`` (None if none), ``end`` (same clock)."""
    in_flight, mid_generation = [], []
    for i, t in enumerate(timings):
        s = t['start']
        others = [u for j, u in enumerate(timings) if j != i and u['start'] < s < u['end']]
        in_flight.append(len(others))
        mid_generation.append(sum(u['first_chunk'] is not None and u['first_chunk'] < s for u in others))
    return dict(starts=len(timings),
                starts_with_others_in_flight=sum(n > 0 for n in in_flight),
                starts_with_others_past_first_block=sum(n > 0 for n in mid_generation),
                max_in_flight_at_start=max(in_flight, default=0))


# ---- comparison ----------------------------------------------------------------------------------


def first_difference(a: list, b: list) -> int | None:
    """First position where ``a`` and ``b`` differ (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def describe_difference(expected: list, got: list, prompt_len: int, block_length: int) -> dict | None:
    pos = first_difference(expected, got)
    if pos is None:
        return None
    block, in_block = block_position(prompt_len, pos, block_length)
    return dict(position=pos, block=block, in_block=in_block,
                expected_token=expected[pos] if pos < len(expected) else None,
                got_token=got[pos] if pos < len(got) else None,
                expected_len=len(expected), got_len=len(got))


def compare_outputs(expected: list, got: list, prompt_lens: list, block_length: int, labels: list | None = None,
                    partial: list | None = None) -> dict:
    """Per-request comparison. ``expected[i]`` None: not decidable (counted as ``undecided``, which
    fails the case). ``partial[i]`` True (a cancelled request): ``got[i]`` must be a prefix of the
    expected output (``prefix_ok``), it is not counted as identical. Pass: every full request
    identical, every partial one a prefix, nothing undecided."""
    n = len(expected)
    if not (len(got) == len(prompt_lens) == n):
        raise ValueError('expected, got and prompt_lens must have the same length')
    labels = labels or [str(i) for i in range(n)]
    partial = partial or [False] * n
    identical = undecided = partial_ok = 0
    differences = []
    for i in range(n):
        exp, out = expected[i], got[i]
        if exp is None:
            undecided += 1
            continue
        if partial[i]:
            if list(out) == list(exp[:len(out)]):
                partial_ok += 1
            else:
                differences.append(dict(request=labels[i], cancelled=True,
                                        **describe_difference(exp[:len(out)], out, prompt_lens[i], block_length)))
            continue
        diff = describe_difference(list(exp), list(out), prompt_lens[i], block_length)
        if diff is None:
            identical += 1
        else:
            differences.append(dict(request=labels[i], **diff))
    full = n - sum(partial)
    return dict(passed=not differences and undecided == 0 and n > 0, sequences=full, identical=identical,
                cancelled=sum(partial), cancelled_prefix_ok=partial_ok, undecided=undecided,
                differences=differences)


# ---- summary -------------------------------------------------------------------------------------

PASS, FAIL, ERROR, SKIPPED = 'pass', 'FAIL', 'error', 'skipped'


def case_cell(result: dict | None) -> str:
    """One table cell: ``pass 16/16``, ``FAIL 14/16 @37``, ``error``, ``skipped`` or ``-``."""
    if not result:
        return '-'
    status = result.get('status')
    if status in (ERROR, SKIPPED):
        return status
    seqs, same = result.get('sequences'), result.get('identical')
    text = status if seqs is None else f'{status} {same}/{seqs}'
    if status == FAIL:
        firsts = [d['position'] for d in result.get('differences', []) if d.get('position') is not None]
        if firsts:
            text += f' @{min(firsts)}'
        elif result.get('undecided'):
            text += f' ?{result["undecided"]}'
    return text


def format_table(results: dict, cases: list) -> str:
    """Rows = cases, columns = arms; ``results[arm][case]`` is a case result (or missing)."""
    arms = list(results)
    rows = [['case', *arms]] + [[case, *(case_cell(results[arm].get(case)) for arm in arms)] for case in cases]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def overall_status(results: dict) -> str:
    """``pass`` when every recorded case of every arm passed (skipped cases do not count)."""
    statuses = [r.get('status') for arm in results.values() for r in arm.values() if isinstance(r, dict)]
    statuses = [s for s in statuses if s != SKIPPED]
    return PASS if statuses and all(s == PASS for s in statuses) else FAIL


def check_logprobs(tokens: list, logprobs: list, num_logprobs: int, tol: float = 1e-3) -> dict:
    """A greedy request's logprobs (``[{token_id: logprob}, ...]``, one dict per returned token) against
    its tokens: one entry per token, each naming its token, at most ``num_logprobs + 1`` ids, values
    <= 0, and the token's value the largest of its entry (greedy picks the argmax; ``tol`` for bf16)."""
    problems = []
    if len(logprobs) != len(tokens):
        problems.append(f'{len(logprobs)} logprob entries for {len(tokens)} tokens')
    for i, (token, entry) in enumerate(zip(tokens, logprobs)):
        if token not in entry:
            problems.append(f'token {i} ({token}) missing from its entry')
        elif entry[token] < max(entry.values()) - tol:
            problems.append(f'token {i}: {entry[token]:.4f} below the entry max {max(entry.values()):.4f}')
        if len(entry) > num_logprobs + 1 or any(v > tol for v in entry.values()):
            problems.append(f'token {i}: malformed entry {entry}')
        if len(problems) >= 5:
            break
    return dict(passed=not problems, problems=problems)
