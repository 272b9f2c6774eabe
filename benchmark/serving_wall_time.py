"""Wall time of a fixed request load through ``lmdeploy serve api_server``, arms paired (issue 14).

    python3 benchmark/serving_wall_time.py --model models/tiny-sdar-5m-b32 --out OUT.json \
        [--arm stock= --arm focus=--focus] [--rounds 3]

Starts one server per arm (``--arm NAME=ARGS``, extra api_server arguments, after optional
``ENV:VAR=value`` words for its environment; default stock and ``--focus``), all at once on the same GPU, each with the same ``--cache-max-entry-count`` so they fit
side by side. Once every ``/health`` answers, each round sends the same load to every arm in turn (the
order alternates between rounds, so neither arm always goes first): ``--requests`` completions at
``--concurrency`` from a thread pool (standard library only), random prompts of 5-60 words,
``max_tokens`` 16-128 (not multiples of the block), greedy and sampled mixed, ignore_eos. Round 1 is
each server's first traffic ever (start-up cost inside the timed load); later rounds are steady state.
After each load the ``lmdeploy:dllm_*`` counters on ``/metrics`` are read (arms with ``--dllm-track``,
which ``--focus`` implies while metrics are on): the load's denoising sequence-steps and generated
tokens, so a wall-time ratio splits into "more steps" and "dearer steps". ``--host-profile``: every
server process samples its main thread during the timed loads only (``serving_profile/sitecustomize.py``),
reported per arm and process.

Why paired: arms run back to back in separate server lifetimes varied by up to 17 % on one machine
(2026-12-06), more than the difference being measured. Here each round's ratio compares loads seconds
apart on the same machine state, and the report gives every round's ratio against the first arm.
"""
import argparse
import glob
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

WORDS = 'the of and to in a is that for it as was with be by on not he this are or his from at'.split()
DEFAULT_ARMS = ('stock=', 'focus=--focus')
DLLM_PREFIX = 'lmdeploy:dllm_'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def post(url, body, timeout=300):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def requests_mix(count, seed):
    rng = random.Random(seed)
    for i in range(count):
        body = dict(prompt=' '.join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))),
                    max_tokens=rng.randint(16, 128), ignore_eos=True)
        if i % 2:
            body.update(temperature=0.8, top_p=0.95, seed=i)
        else:
            body.update(temperature=0.0)
        yield body


def parse_arm(text: str) -> tuple[str, list[str], dict[str, str]]:
    """``NAME=ARGS`` -> (name, api_server arguments, environment); a clear error naming the flag otherwise.

    Leading ``ENV:VAR=value`` words set the server's environment, e.g. ``ENV:LMDEPLOY_FOCUS_AWAIT_STREAM=0``, or
    ``ENV:PYTHONPATH=DIR`` for a plugin build installed elsewhere (two code versions paired in one run).
    """
    name, sep, rest = text.partition('=')
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f'--arm {text!r}: expected NAME=ARGS, e.g. focus=--focus or stock=')
    words, env = rest.split(), {}
    while words and words[0].startswith('ENV:'):
        var, eq, value = words.pop(0)[len('ENV:'):].partition('=')
        if not eq or not var:
            raise argparse.ArgumentTypeError(f'--arm {text!r}: expected ENV:VAR=value before the arguments')
        env[var] = value
    return name.strip(), words, env


def dllm_counters(text: str) -> dict[str, float]:
    """``lmdeploy:dllm_*_total`` counters of a Prometheus exposition, summed over their labels."""
    totals = {}
    for line in text.splitlines():
        if not line.startswith(DLLM_PREFIX) or ' ' not in line:
            continue
        series, value = line.rsplit(' ', 1)
        name = series.split('{', 1)[0][len(DLLM_PREFIX):]
        if name.endswith('_total'):
            totals[name[:-len('_total')]] = totals.get(name[:-len('_total')], 0.0) + float(value)
    return totals


def counter_delta(before: dict, after: dict) -> dict:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def environment() -> dict:
    """Versions, GPU, git commit and plugin build of this run (``throughput.report.environment``, the drivers')."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchmark_packages import load_benchmark_packages  # (drops benchmark/ from sys.path again)
    load_benchmark_packages('throughput')
    from throughput.report import environment as run_environment
    return run_environment()


def round_order(names: list[str], index: int) -> list[str]:
    """Arms in round ``index`` (0-based): as given on even rounds, reversed on odd ones."""
    return list(names) if index % 2 == 0 else list(reversed(names))


def summarize(names: list[str], walls: dict[str, list[float]], complete: dict[str, list[bool]] | None = None) -> dict:
    """Per-round ratios of every arm's wall time to the first arm's, the first round's, and their median.

    ``complete``: per arm and round, whether every request of the load was answered; a round where either arm's
    was not has no ratio (None): a load whose requests failed fast is no speed-up."""
    base = walls[names[0]]
    done = complete or {name: [True] * len(walls[name]) for name in names}

    def median(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    out = {}
    for name in names[1:]:
        ratios = [round(w / b, 3) if ok and ok_base else None
                  for w, b, ok, ok_base in zip(walls[name], base, done[name], done[names[0]])]
        out[name] = dict(round_ratios=ratios, first_round_ratio=ratios[0], median_ratio=median(ratios),
                         steady_median_ratio=median(ratios[1:]) if len(ratios) > 1 else None)
    return out


SAMPLER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serving_profile')


class Server:

    def __init__(self, name: str, model: str, args: list[str], log_path: str, profile_dir: str | None = None,
                 env: dict[str, str] | None = None):
        self.name = name
        self.port = free_port()
        self.cmd = ['lmdeploy', 'serve', 'api_server', model, '--server-port', str(self.port), *args]
        self.log = open(log_path, 'w')
        self.profile_dir = profile_dir
        self.extra_env = dict(env or {})
        env = {**os.environ, **self.extra_env}
        if profile_dir is not None:
            os.makedirs(profile_dir, exist_ok=True)
            env['FOCUS_HOST_SAMPLE_DIR'] = profile_dir
            env['PYTHONPATH'] = os.pathsep.join(p for p in (SAMPLER_DIR, env.get('PYTHONPATH')) if p)
        self.process = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.base = f'http://127.0.0.1:{self.port}'
        self.started = time.perf_counter()
        self.startup_s = None
        self.model_id = None

    def ready(self) -> bool:
        if self.process.poll() is not None:
            sys.exit(f'server {self.name} exited with {self.process.returncode}; see {self.log.name}')
        try:
            urllib.request.urlopen(self.base + '/health', timeout=2)
        except OSError:
            return False
        self.startup_s = round(time.perf_counter() - self.started, 1)
        self.model_id = json.loads(urllib.request.urlopen(self.base + '/v1/models').read())['data'][0]['id']
        return True

    def counters(self) -> dict[str, float]:
        """The server's ``lmdeploy:dllm_*`` counters now ({} without them)."""
        try:
            return dllm_counters(urllib.request.urlopen(self.base + '/metrics', timeout=10).read().decode())
        except OSError:
            return {}

    def load(self, bodies: list[dict], concurrency: int) -> dict:

        def one(body):
            try:
                status, reply = post(self.base + '/v1/completions', dict(body, model=self.model_id))
                return status, reply.get('usage', {}).get('completion_tokens', 0)
            except Exception as e:  # noqa: BLE001  counted as a failure
                return type(e).__name__, 0

        before = self.counters()
        flag = None if self.profile_dir is None else os.path.join(self.profile_dir, 'on')
        if flag:
            open(flag, 'w').close()
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(one, bodies))
        wall = round(time.perf_counter() - start, 2)
        if flag:
            os.remove(flag)
            time.sleep(0.2)  # the watchers poll every 50 ms: a load that follows at once would join this window
        dllm = counter_delta(before, self.counters())
        steps = dllm.get('denoising_steps')
        return dict(wall_s=wall, ok=sum(s == 200 for s, _ in statuses),
                    failures=sorted({str(s) for s, _ in statuses if s != 200}),
                    completion_tokens=sum(t for _, t in statuses), dllm=dllm,
                    steps_per_token=round(steps / dllm['generated_tokens'], 4) if steps and dllm.get('generated_tokens')
                    else None)

    def host_profiles(self) -> list[dict]:
        """What each sampled process of this server wrote (its argv and one report per timed load)."""
        time.sleep(0.5)  # the watchers notice the flag's removal within 50 ms, then write
        profiles = []
        for path in sorted(glob.glob(os.path.join(self.profile_dir, 'prof_*.json'))):
            with open(path) as f:
                profiles.append(json.load(f))
        return profiles

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--arm', action='append', type=parse_arm, dest='arms',
                   help='NAME=ARGS: one server with these extra api_server arguments (repeat; the first is the '
                   f'baseline of the ratios; default {" ".join(DEFAULT_ARMS)})')
    p.add_argument('--rounds', type=int, default=3, help='loads per arm; round 1 right after start-up')
    p.add_argument('--cache-max-entry-count', default='0.2', help='passed to every arm, so the servers fit together')
    p.add_argument('--requests', type=int, default=1000)
    p.add_argument('--concurrency', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--host-profile', action='store_true',
                   help='sample every server process\'s main thread during the timed loads (serving_profile/)')
    args = p.parse_args()
    arms = args.arms or [parse_arm(a) for a in DEFAULT_ARMS]
    names = [name for name, _, _ in arms]
    if len(set(names)) != len(names):
        p.error(f'--arm names must differ: {names}')
    if args.rounds < 1:
        p.error('--rounds must be at least 1')
    servers = {
        name: Server(name, args.model, [*extra, '--cache-max-entry-count', args.cache_max_entry_count],
                     f'{args.out}.{name}.server.log', f'{args.out}.{name}.prof' if args.host_profile else None, env)
        for name, extra, env in arms
    }
    bodies = list(requests_mix(args.requests, args.seed))
    try:
        waiting = set(names)
        while waiting:
            waiting = {name for name in waiting if not servers[name].ready()}
            if waiting:
                time.sleep(1)
        rounds = []
        for index in range(args.rounds):
            loads = {}
            for name in round_order(names, index):
                loads[name] = servers[name].load(bodies, args.concurrency)
                print(json.dumps(dict(round=index + 1, arm=name, **{k: v for k, v in loads[name].items() if k != 'dllm'})),
                      flush=True)
            rounds.append(loads)
        walls = {name: [r[name]['wall_s'] for r in rounds] for name in names}
        complete = {name: [r[name]['ok'] == args.requests for r in rounds] for name in names}
        result = dict(environment=environment(), model=args.model, requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                      arms={name: dict(command=' '.join(servers[name].cmd), env=servers[name].extra_env,
                                       startup_s=servers[name].startup_s,
                                       wall_s=walls[name], ok=[r[name]['ok'] for r in rounds],
                                       failures=sorted({f for r in rounds for f in r[name]['failures']}),
                                       completion_tokens=[r[name]['completion_tokens'] for r in rounds],
                                       steps_per_token=[r[name]['steps_per_token'] for r in rounds],
                                       dllm=[r[name]['dllm'] for r in rounds])
                            for name in names},
                      ratios_to_first_arm=summarize(names, walls, complete))
        if args.host_profile:
            for name in names:
                result['arms'][name]['host_profile'] = servers[name].host_profiles()
        print(json.dumps(result['ratios_to_first_arm']), flush=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
        incomplete = [f'{name} round {i + 1}' for name in names for i, ok in enumerate(complete[name]) if not ok]
        if incomplete:
            sys.exit(f'serving_wall_time: requests failed in {", ".join(incomplete)} (no ratio for those rounds; '
                     f'see {args.out} and the server logs)')
    finally:
        for server in servers.values():
            server.stop()


if __name__ == '__main__':
    main()
