"""Serving soak check (issue 15, item 3): the real ``lmdeploy serve api_server`` under a mixed load, with
bad requests among good ones, must never die, never answer 5xx, never drop a connection.

    python checks/serving_soak_check.py --model models/tiny-sdar-5m-b32 --out OUT.json [--focus]
    python checks/serving_soak_check.py --model models/tiny-sdar-5m-b32 --out OUT.json --both

Each arm (stock, or ``--focus``; ``--both`` runs stock then FOCUS and prints them side by side) starts its
own api_server subprocess on a free port, waits for ``/health``, warms up, records the greedy answers of
a fixed prompt set and the GPU memory in use (``nvidia-smi``), then sends ``--requests`` (default 1200)
requests at ``--concurrency`` (default 64) from an httpx client: plain and chat completions, streamed
and not, client disconnects mid-stream, stop strings and stop token ids (single tokens chosen so they
land mid-block), ``max_tokens`` not a multiple of the block length, ``skip_special_tokens: false``,
greedy and sampled side by side, and every bad input of ``lmdeploy_focus.serving.validation``
(``serving_soak/logic.py``: the mix and the classification). Afterwards: ``/health``, the greedy set
again (must be identical), the GPU memory again (within 1% of the warm-up level), and the server log
scanned for an engine-loop death.

Pass = zero engine deaths, zero 5xx, zero dropped connections, every bad request a 4xx naming the field,
no mask token in any output, every other request well-formed, GPU memory within 1%, greedy answers
identical. The JSON (per arm: verdict, counts, every failing outcome, environment) is written at the
end; exit status 0 when every arm passed. The server's log is kept next to OUT.json.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402

load_benchmark_packages('serving_soak')
from serving_soak import logic  # noqa: E402

GREEDY_PROMPTS = ['The capital of France is', 'def add(a, b):', 'Once upon a time', '1, 2, 3, 4,']
DEATH_MARKERS = ('Engine main loop failed', 'The inference engine has stopped', 'ENGINE_STOP_ERROR')


def log(message: str) -> None:
    print(f'[soak {time.strftime("%H:%M:%S")}] {message}', flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--focus', action='store_true', help='the FOCUS arm only (default: stock only)')
    p.add_argument('--both', action='store_true', help='stock, then FOCUS, side by side')
    p.add_argument('--requests', type=int, default=1200)
    p.add_argument('--concurrency', type=int, default=64)
    p.add_argument('--block-length', type=int, default=None, help='default: the -b<N> of the model path, else 32')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--timeout', type=float, default=120.0, help='seconds per request')
    p.add_argument('--startup-timeout', type=float, default=600.0)
    p.add_argument('--extra-server-args', default='', help='appended to the api_server command line')
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def block_length_of(args) -> int:
    if args.block_length:
        return args.block_length
    from lmdeploy_focus.config.model_facts import block_length_from_path
    return block_length_from_path(args.model) or 32


def gpu_memory_mib() -> float | None:
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=memory.used', '--format=csv,noheader,nounits'],
                             capture_output=True, text=True, timeout=30).stdout
        return float(sum(float(x) for x in out.split()))
    except Exception:
        return None


def model_facts(model: str) -> tuple[int, int]:
    """(mask token, vocabulary size) from the checkpoint's config."""
    from transformers import AutoConfig

    from lmdeploy_focus.config.model_facts import SDAR_MASK_TOKEN, mask_token_from_hf_config
    cfg = AutoConfig.from_pretrained(model, trust_remote_code=True)
    return mask_token_from_hf_config(cfg, SDAR_MASK_TOKEN), int(cfg.vocab_size)


class Server:

    def __init__(self, args, arm: str, log_path: str):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        cmd = ['lmdeploy', 'serve', 'api_server', args.model, '--backend', 'pytorch', '--server-port', str(self.port),
               '--model-name', 'm', '--log-level', 'INFO', '--dllm-block-length', str(block_length_of(args))]
        if arm == 'focus':
            cmd.append('--focus')
        cmd += args.extra_server_args.split()
        self.cmd = cmd
        self.log_path = log_path
        self.log_file = open(log_path, 'w')
        log(f'{arm}: {" ".join(cmd)}  (log: {log_path})')
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT)

    async def wait_healthy(self, client, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'api_server exited with {self.proc.returncode}; see {self.log_path}')
            try:
                if (await client.get(self.url + '/health', timeout=5)).status_code == 200:
                    return
            except Exception:
                pass
            await asyncio.sleep(2)
        raise TimeoutError(f'api_server not healthy after {timeout}s; see {self.log_path}')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def deaths(self) -> int:
        with open(self.log_path, errors='replace') as f:
            text = f.read()
        return sum(text.count(marker) for marker in DEATH_MARKERS)


async def send(client, url: str, spec: logic.Spec, timeout: float, mask_text: str,
               mask_id: int | None = None) -> logic.Outcome:
    try:
        if spec.stream:
            async with client.stream('POST', url + spec.path, json=spec.body, timeout=timeout) as r:
                if spec.disconnect_after is not None and r.status_code == 200:
                    chunks = 0
                    async for line in r.aiter_lines():
                        if line.startswith('data: '):
                            chunks += 1
                            if chunks >= spec.disconnect_after:
                                break  # leaving the block closes the connection mid-stream
                    return logic.classify(spec, status=r.status_code, body=None, error=None, mask_text=mask_text,
                                          disconnected=True)
                body = (await r.aread()).decode(errors='replace')
                status = r.status_code
        else:
            r = await client.post(url + spec.path, json=spec.body, timeout=timeout)
            body, status = r.text, r.status_code
    except Exception as e:  # connection dropped, reset, timed out
        return logic.classify(spec, status=None, body=None, error=f'{type(e).__name__}: {e}', mask_text=mask_text)
    return logic.classify(spec, status=status, body=body, error=None, mask_text=mask_text, mask_id=mask_id)


async def greedy_answers(client, url: str, block_length: int) -> list:
    answers = []
    for prompt in GREEDY_PROMPTS:
        body = dict(model='m', prompt=prompt, max_tokens=2 * block_length + 3, temperature=0.0, top_k=1)
        r = await client.post(url + '/v1/completions', json=body, timeout=120)
        answers.append(r.json()['choices'][0]['text'] if r.status_code == 200 else f'HTTP {r.status_code}')
    return answers


async def dllm_metrics(client, url: str) -> list[str] | None:
    """The ``lmdeploy:dllm_*`` lines of ``/metrics`` (None: the server was started without metrics)."""
    r = await client.get(url + '/metrics', timeout=30)
    if r.status_code != 200:
        return None
    return [line for line in r.text.splitlines() if line.startswith(('lmdeploy:dllm_', '# HELP lmdeploy:dllm_'))]


async def encode(client, url: str, text: str) -> list[int]:
    r = await client.post(url + '/v1/encode', json=dict(input=text, add_bos=False), timeout=30)
    r.raise_for_status()
    return r.json()['input_ids']


async def run_arm(args, arm: str, log_path: str) -> logic.ArmReport:
    import httpx
    block_length = block_length_of(args)
    mask_token, vocab = model_facts(args.model)
    report = logic.ArmReport(arm)
    server = Server(args, arm, log_path)
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency)
    try:
        async with httpx.AsyncClient(limits=limits) as client:
            await server.wait_healthy(client, args.startup_timeout)
            url = server.url
            # single-token stop strings and their ids (they land wherever the text has them: mid-block)
            stop_strings = [s for s in (' ', 'e', '.', '\n', ',', 'a') if len(await encode(client, url, s)) == 1]
            stop_ids = [(await encode(client, url, s))[0] for s in stop_strings]
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
            mask_text = tok.convert_ids_to_tokens(mask_token) or ''
            log(f'{arm}: warm-up')
            for _ in range(2):
                await asyncio.gather(*(greedy_answers(client, url, block_length) for _ in range(4)))
            report.greedy_before = await greedy_answers(client, url, block_length)
            report.gpu_mem_warm_mib = gpu_memory_mib()
            specs = logic.build_mix(args.requests, model='m', block_length=block_length, mask_token=mask_token,
                                    vocab_size=vocab, stop_token_ids=stop_ids, stop_strings=stop_strings,
                                    seed=args.seed)
            for spec in specs:
                if spec.encode_prompt is not None:
                    spec.body['input_ids'] = await encode(client, url, spec.encode_prompt)
            semaphore = asyncio.Semaphore(args.concurrency)

            async def one(spec):
                async with semaphore:
                    return await send(client, url, spec, args.timeout, mask_text, mask_token)

            log(f'{arm}: {len(specs)} requests at concurrency {args.concurrency}')
            start = time.time()
            report.outcomes = await asyncio.gather(*(one(s) for s in specs))
            report.seconds = time.time() - start
            await asyncio.sleep(2)
            report.health_after = (await client.get(url + '/health', timeout=30)).status_code
            report.greedy_after = await greedy_answers(client, url, block_length)
            report.gpu_mem_after_mib = gpu_memory_mib()
            report.metrics_excerpt = await dllm_metrics(client, url)
    finally:
        server.stop()
        report.engine_deaths = server.deaths()
    return report


def main(argv=None):
    args = parse_args(argv)
    arms = ['stock', 'focus'] if args.both else (['focus'] if args.focus else ['stock'])
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    results, verdicts = {}, []
    for arm in arms:
        log_path = os.path.splitext(os.path.abspath(args.out))[0] + f'.{arm}.server.log'
        try:
            report = asyncio.run(run_arm(args, arm, log_path))
        except Exception as e:
            log(f'{arm}: failed: {type(e).__name__}: {e}')
            results[arm] = dict(error=f'{type(e).__name__}: {e}', server_log=log_path)
            verdicts.append(dict(arm=arm, requests=0, counts={}, checks={'arm ran': False}, passed=False))
            continue
        v = logic.verdict(report)
        verdicts.append(v)
        results[arm] = dict(verdict=v, seconds=report.seconds, engine_deaths=report.engine_deaths,
                            health_after=report.health_after, gpu_mem_warm_mib=report.gpu_mem_warm_mib,
                            gpu_mem_after_mib=report.gpu_mem_after_mib, greedy_before=report.greedy_before,
                            greedy_after=report.greedy_after, server_log=log_path,
                            metrics_excerpt=report.metrics_excerpt,
                            failures=[o.__dict__ for o in report.outcomes if not o.passed][:200])
        log(f'{arm}: {"PASS" if v["passed"] else "FAIL"} {v["counts"]}')
    with open(args.out, 'w') as f:
        json.dump(dict(model=args.model, requests=args.requests, concurrency=args.concurrency, arms=results), f,
                  indent=1)
    if all('checks' in v and len(v['checks']) > 1 for v in verdicts):
        print(logic.side_by_side(verdicts))
    log(f'wrote {args.out}')
    return 0 if all(v['passed'] for v in verdicts) else 1


if __name__ == '__main__':
    sys.exit(main())
