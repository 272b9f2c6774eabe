"""Wall time of a fixed request load through ``lmdeploy serve api_server``, right after start-up (issue 14).

    python3 benchmark/serving_wall_time.py --model models/tiny-sdar-5m-b32 --out OUT.json [--server-args "--focus"]

Starts the server (one arm per call), waits for ``/health``, then sends ``--requests`` completions at
``--concurrency`` from a thread pool (standard library only): random prompts of 5-60 words,
``max_tokens`` 16-128 (not multiples of the block), greedy and sampled mixed, ignore_eos. The first
request is the first the server ever sees: start-up cost stays inside the timed load.
"""
import argparse
import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

WORDS = 'the of and to in a is that for it as was with be by on not he this are or his from at'.split()


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


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--server-args', default='', help='extra api_server arguments, e.g. "--focus"')
    p.add_argument('--requests', type=int, default=1000)
    p.add_argument('--concurrency', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    port = free_port()
    cmd = ['lmdeploy', 'serve', 'api_server', args.model, '--server-port', str(port), *args.server_args.split()]
    log = open(args.out + '.server.log', 'w')
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f'server exited with {server.returncode}; see {log.name}')
            try:
                urllib.request.urlopen(base + '/health', timeout=2)
                break
            except OSError:
                time.sleep(1)
        startup_s = time.perf_counter() - start
        model = json.loads(urllib.request.urlopen(base + '/v1/models').read())['data'][0]['id']
        bodies = [dict(b, model=model) for b in requests_mix(args.requests, args.seed)]
        statuses = []

        def one(body):
            try:
                status, reply = post(base + '/v1/completions', body)
                return status, reply.get('usage', {}).get('completion_tokens', 0)
            except Exception as e:  # noqa: BLE001  counted as a failure
                return type(e).__name__, 0

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            statuses = list(pool.map(one, bodies))
        wall = time.perf_counter() - start
        ok = sum(s == 200 for s, _ in statuses)
        result = dict(command=' '.join(cmd), requests=args.requests, concurrency=args.concurrency, ok=ok,
                      failures=sorted({str(s) for s, _ in statuses if s != 200}), wall_s=round(wall, 2),
                      completion_tokens=sum(t for _, t in statuses), startup_s=round(startup_s, 1))
        print(json.dumps(result), flush=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == '__main__':
    main()
