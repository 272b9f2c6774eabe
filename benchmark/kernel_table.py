"""GPU kernel time by kernel name from a torch-profiler chrome trace, and the difference of two traces.

    python3 benchmark/kernel_table.py TRACE.json[.gz] [--minus OTHER.json[.gz]] [--per N] [--top 40] [--json OUT]

Made for upstream's agent profiler (``LMDEPLOY_PROFILE_CUDA=1``, ``LMDEPLOY_PROFILE_OUT_PREFIX``; the trace is
written when the engine stops): ``benchmark/gpu/kernel_profile.sh`` runs stock and FOCUS at a small batch on
the same prompts and subtracts one table from the other, so the kernels both arms run in equal numbers
(prefill, the layers' GEMMs) cancel and what a FOCUS step adds shows by name. ``--per N`` divides every
figure by ``N`` (e.g. each arm's decode steps, or the generated tokens, for per-step / per-token numbers).
The summary line also gives the GPU's busy and idle time over the kernels' span (idle: host turns, syncs and
launch gaps; on a small batch, the host work a step exposes).
Kernels launched from CUDA graphs are traced like any other where CUPTI reports them.
"""
import argparse
import collections
import gzip
import json
import os
import sys


def load_trace(path: str) -> dict:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt') as f:
        return json.load(f)


def kernel_totals(trace: dict) -> dict[str, tuple[float, int]]:
    """Per kernel name: (total µs, launches), over the trace's GPU kernel events."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    for event in trace.get('traceEvents', []):
        if event.get('ph') == 'X' and event.get('cat') == 'kernel':
            entry = totals[event.get('name', '?')]
            entry[0] += float(event.get('dur', 0.0))
            entry[1] += 1
    return {name: (us, count) for name, (us, count) in totals.items()}


# Gaps between kernels longer than this are the engine waiting for work (between waves), not a step's idle time.
MAX_STEP_GAP_US = 50_000.0


def busy_and_span(trace: dict, max_gap_us: float = MAX_STEP_GAP_US) -> tuple[float, float]:
    """(µs some kernel ran, µs of the kernels' span without gaps longer than ``max_gap_us``): their difference is
    the time the GPU sat idle between kernels (host turns, syncs, launch gaps), over every stream together."""
    spans = sorted((float(e['ts']), float(e['ts']) + float(e.get('dur', 0.0))) for e in trace.get('traceEvents', [])
                   if e.get('ph') == 'X' and e.get('cat') == 'kernel' and 'ts' in e)
    if not spans:
        return 0.0, 0.0
    busy = idle = 0.0
    start, end = spans[0]
    for lo, hi in spans[1:]:
        if lo > end:  # a gap: close the merged interval
            busy += end - start
            idle += (lo - end) if lo - end <= max_gap_us else 0.0
            start, end = lo, hi
        else:
            end = max(end, hi)
    busy += end - start
    return busy, busy + idle


def table(totals: dict, minus: dict | None = None, per: float = 1.0, top: int = 40) -> list[dict]:
    """Rows sorted by |µs| (largest first): name, µs and launches (divided by ``per``), minus ``minus``'s."""
    if per <= 0:
        raise ValueError(f'--per must be positive, got {per}')
    minus = minus or {}
    rows = []
    for name in set(totals) | set(minus):
        us, count = totals.get(name, (0.0, 0))
        other_us, other_count = minus.get(name, (0.0, 0))
        rows.append(dict(name=name, us=(us - other_us) / per, launches=(count - other_count) / per))
    rows.sort(key=lambda r: (-abs(r['us']), r['name']))
    return rows[:top]


def summary(totals: dict, minus: dict | None = None, per: float = 1.0, busy_span=None, minus_busy_span=None) -> dict:
    """Sum of every kernel's µs and launches (this trace, the other, and their difference), divided by ``per``;
    with ``busy_span`` (:func:`busy_and_span`) also the GPU's busy and idle µs over the kernels' span."""
    us, count = sum(v[0] for v in totals.values()), sum(v[1] for v in totals.values())
    out = dict(us=us / per, launches=count / per)
    if busy_span is not None:
        out.update(busy_us=busy_span[0] / per, idle_us=(busy_span[1] - busy_span[0]) / per)
    if minus is not None:
        other_us, other_count = sum(v[0] for v in minus.values()), sum(v[1] for v in minus.values())
        out.update(minus_us=other_us / per, minus_launches=other_count / per, diff_us=(us - other_us) / per,
                   diff_launches=(count - other_count) / per)
        if busy_span is not None and minus_busy_span is not None:
            out.update(minus_busy_us=minus_busy_span[0] / per,
                       minus_idle_us=(minus_busy_span[1] - minus_busy_span[0]) / per)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('trace')
    p.add_argument('--minus', default=None, help='a second trace whose per-kernel totals are subtracted')
    p.add_argument('--per', type=float, default=1.0, help='divide every figure by this (e.g. decode steps)')
    p.add_argument('--top', type=int, default=40)
    p.add_argument('--json', default=None, help='also write the summary and the rows here')
    args = p.parse_args(argv)
    trace = load_trace(args.trace)
    totals, span = kernel_totals(trace), busy_and_span(trace)
    minus = minus_span = None
    if args.minus:
        other = load_trace(args.minus)
        minus, minus_span = kernel_totals(other), busy_and_span(other)
    head = summary(totals, minus, args.per, span, minus_span)
    rows = table(totals, minus, args.per, args.top)
    if args.json:  # first: a reader that closes the pipe early (| head) must not cost the file
        with open(args.json, 'w') as f:
            json.dump(dict(trace=args.trace, minus=args.minus, per=args.per, summary=head, rows=rows), f, indent=1)
    try:
        print(json.dumps(head))
        for r in rows:
            print(f"{r['us']:12.2f} us {r['launches']:10.2f} x  {r['name'][:140]}")
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not in the interpreter's exit flush
    except BrokenPipeError:  # | head: the reader has what it wanted; the exit flush must not retry the pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == '__main__':
    sys.exit(main())
