"""Where the engine thread's time goes during a timed throughput wave: a sampling profiler.

    python3 benchmark/host_profile.py --out PROFILE.json [--interval-ms 2] -- <profile_throughput.py arguments>

Runs ``benchmark/profile_throughput.py`` unchanged (same engine, prompts, warm-up wave) and, during
each timed wave only, samples the main thread's Python stack every ``--interval-ms`` from a
background thread. The in-process engine (scheduler, model agent, sampling, output handling) runs
in that thread's event loop, so the samples split the wall time into:

* waiting for the GPU: the leaf frame blocks in a device read (``.tolist()``, ``.item()``,
  ``synchronize``, event waits) — the GPU is the bottleneck there;
* idle in the event loop (``select``): nothing to do until an output event fires;
* host work: everything else, attributed to the functions on the stack.

Why sampling and not cProfile: cProfile slows Python-heavy code ~2x and would shift the balance
between host and GPU it is meant to measure; a 2 ms sampler costs well under 1 %.
Writes ``PROFILE.json``: per timed wave, the sample count, the three shares above, the top leaf
lines (self time) and the top functions by inclusive time.
"""
import argparse
import collections
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# leaf frames that block on the device (GPU-bound time), matched on the source line's text
DEVICE_WAITS = ('.tolist()', '.item()', 'synchronize(', '.cpu()', '.numpy()', 'event.wait', 'query()')
IDLE_LEAVES = (('selectors.py', 'select'), ('base_events.py', '_run_once'))


class StackSampler:
    """Samples one thread's Python stack at a fixed interval (from a daemon thread)."""

    def __init__(self, thread_id: int, interval_s: float):
        self.thread_id = thread_id
        self.interval_s = interval_s
        self.leaf = collections.Counter()  # 'file:line func' of the innermost frame
        self.inclusive = collections.Counter()  # 'file func', once per sample
        self.kinds = collections.Counter()  # gpu_wait / idle / host
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._lines = {}

    def __enter__(self):
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.wall_s = time.perf_counter() - self.started

    def _line_text(self, filename: str, lineno: int) -> str:
        key = (filename, lineno)
        if key not in self._lines:
            import linecache
            self._lines[key] = linecache.getline(filename, lineno).strip()
        return self._lines[key]

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self.thread_id)
            if frame is None:
                continue
            self.samples += 1
            code = frame.f_code
            short = os.path.basename(code.co_filename)
            self.leaf[f'{short}:{frame.f_lineno} {code.co_name}'] += 1
            text = self._line_text(code.co_filename, frame.f_lineno)
            if any(w in text for w in DEVICE_WAITS):
                self.kinds['gpu_wait'] += 1
            elif (short, code.co_name) in IDLE_LEAVES:
                self.kinds['idle'] += 1
            else:
                self.kinds['host'] += 1
            seen = set()
            while frame is not None:
                code = frame.f_code
                name = f'{_package_path(code.co_filename)} {code.co_name}'
                if name not in seen:
                    seen.add(name)
                    self.inclusive[name] += 1
                frame = frame.f_back

    def report(self, top: int = 40) -> dict:
        n = max(self.samples, 1)
        return dict(wall_s=round(self.wall_s, 3), samples=self.samples, interval_ms=self.interval_s * 1e3,
                    shares={k: round(v / n, 4) for k, v in self.kinds.items()},
                    top_leaf=[(k, round(v / n, 4)) for k, v in self.leaf.most_common(top)],
                    top_inclusive=[(k, round(v / n, 4)) for k, v in self.inclusive.most_common(top * 2)])


def _package_path(filename: str) -> str:
    """The path from the package root (lmdeploy/..., lmdeploy_focus/..., asyncio/...)."""
    for root in ('lmdeploy_focus', 'lmdeploy', 'asyncio', 'torch'):
        marker = f'{os.sep}{root}{os.sep}'
        if marker in filename:
            return root + os.sep + filename.split(marker, 1)[1]
    return os.path.basename(filename)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if '--' not in argv and any(a in ('-h', '--help') for a in argv):
        print(__doc__)  # a question, not a mistake: exit 0
        return
    if '--' not in argv:
        raise SystemExit('usage: host_profile.py --out FILE [--interval-ms MS] -- <profile_throughput arguments>')
    split = argv.index('--')
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--interval-ms', type=float, default=2.0)
    args = p.parse_args(argv[:split])
    sys.path.insert(0, HERE)
    import profile_throughput
    from throughput import engine_runner

    waves = []
    main_thread = threading.main_thread().ident
    timed_run_requests = engine_runner.run_requests

    async def run_requests(engine, prompts, concurrency, streamer, make_gen_config, desc='requests', progress=True):
        if not progress:  # the untimed warm-up wave
            return await timed_run_requests(engine, prompts, concurrency, streamer, make_gen_config, desc, progress)
        with StackSampler(main_thread, args.interval_ms / 1e3) as sampler:
            result = await timed_run_requests(engine, prompts, concurrency, streamer, make_gen_config, desc,
                                              progress)
        waves.append(dict(wave=desc, **sampler.report()))
        with open(args.out, 'w') as f:  # written after every wave: a fast exit keeps what was measured
            json.dump(dict(command=' '.join(sys.argv), waves=waves), f, indent=1)
        return result

    engine_runner.run_requests = run_requests
    try:
        profile_throughput.main(argv[split + 1:])
    except profile_throughput.BenchmarkInputError as e:  # profile_throughput's own one-line usage errors
        raise SystemExit(f'profile_throughput: error: {e}') from None


if __name__ == '__main__':
    main()
