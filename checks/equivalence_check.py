"""Issue 3 equivalence on the GPU: engine runs recorded step by step, first differences classified.

    python3 checks/equivalence_check.py --out OUT_DIR --ckpt-a SDAR_1.7B_DIR --ckpt-b TINY_FP32_DIR

(a) random SDAR-1.7B (bf16): stock decoding vs delayed cache with every position processed
    (``LMDEPLOY_FOCUS_DELAYED_CACHE_PROCESS_ALL=1``: the claim "greedy outputs match stock"), and for
    information delayed cache exact / fast (different KV by design).
(b) tiny random SDAR (fp32 checkpoint, fp32 engine): engine stock / delayed exact / delayed fast vs
    the CPU reference loop of the same mode (fp64 by default) on the same prompt ids, block
    length, unmasking and ``max_new_tokens``. The three reference runs start first, as separate
    CPU processes, and overlap with the GPU arms.

Every run uses ``LMDEPLOY_FOCUS_RECORD_STEPS``; ``equivalence.compare_steps`` pairs sequences by
prompt and reports, per sequence, identical / near-tie / mismatch with the deciding gap and the
measured noise (see ``equivalence.tolerances``). Greedy, eager, static unmasking (4 tokens per step
at block 32), no stop tokens. Every arm and every comparison is wrapped: a failure is recorded in
the JSON and the rest goes on; the JSON is rewritten after each arm, so a time-out leaves the
results so far.

Writes ``equivalence.json`` (everything) and ``equivalence_tables.txt`` (one table per comparison).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from equivalence.compare_steps import compare_recordings, dump_json
from equivalence.engine_arm import PROCESS_ALL_ENV, run_arm
from equivalence.reference_mode import compare_to_reference_sequences
from equivalence.reference_worker import load_sequences
from equivalence.report import format_table
from lmdeploy_focus_dev.testing.step_recorder import load_meta

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms')
from arms import arm_fields  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED_META = ('probe_ids', 'block_length', 'mask_token_id', 'unmasking_strategy', 'denoising_steps')
DELAYED_EXACT = arm_fields('delayed_exact', stock_steps=False)
DELAYED_FAST = arm_fields('delayed_fast', stock_steps=False)
# arm name -> (engine kwargs, environment)
ARMS_A = {
    'stock': ({}, {}),
    'delayed_process_all': (DELAYED_EXACT, {PROCESS_ALL_ENV: '1'}),
    'delayed_exact': (DELAYED_EXACT, {}),
    'delayed_fast': (DELAYED_FAST, {}),
}
ARMS_B = {'stock': ({}, {}), 'delayed_exact': (DELAYED_EXACT, {}), 'delayed_fast': (DELAYED_FAST, {})}
# reference mode of each tiny arm: (delayed_cache, commit_mode)
REFERENCE_MODES = {'stock': (False, 'exact'), 'delayed_exact': (True, 'exact'), 'delayed_fast': (True, 'fast')}
# priority order: the two claims first, the information arms last
SCHEDULE = [('a', 'stock'), ('a', 'delayed_process_all'), ('b', 'delayed_exact'), ('b', 'delayed_fast'),
            ('b', 'stock'), ('a', 'delayed_exact'), ('a', 'delayed_fast')]


def log(message: str) -> None:
    print(f'[eq {time.strftime("%H:%M:%S")}] {message}', flush=True)


def make_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    """Random ids of ordinary tokens; lengths vary so prompts end at different block positions."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1000, 150000, size=length + int(rng.integers(0, 32))).tolist() for _ in range(count)]


def token_differences(tokens_a: list, tokens_b: list) -> dict:
    def first_difference(a, b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return i
        return None if len(a) == len(b) else min(len(a), len(b))

    diffs = [first_difference(a, b) for a, b in zip(tokens_a, tokens_b)]
    return dict(identical_sequences=sum(d is None for d in diffs), sequences=len(diffs),
                first_difference_positions=diffs)


class Run:
    """The results so far, written to OUT after every change."""

    def __init__(self, args):
        self.args = args
        self.start = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tables: list[str] = []
        self.tokens: dict = {}
        self.reference_meta: dict = {}
        self.result = dict(date=time.strftime('%Y-%m-%d %H:%M'), command=' '.join(sys.argv), settings=vars(args),
                           part_a=dict(arms={}, comparisons={}), part_b=dict(arms={}, references={}, comparisons={}))

    def time_left(self) -> float:
        return self.args.time_budget - (time.perf_counter() - self.start)

    def save(self) -> None:
        dump_json(self.result, self.out / 'equivalence.json')
        (self.out / 'equivalence_tables.txt').write_text('\n\n'.join(self.tables) + '\n')

    def add_table(self, title: str, comparison: dict) -> None:
        table = format_table(comparison, title)
        self.tables.append(table)
        print(table, flush=True)


def engine_kwargs(args, extra: dict) -> dict:
    return dict(max_batch_size=max(args.prompts_a, args.prompts_b), eager_mode=True, cache_max_entry_count=0.5,
                max_prefill_token_num=8192, dllm_block_length=args.block_length,
                dllm_unmasking_strategy='low_confidence_static', dllm_denoising_steps=args.denoising_steps, **extra)


def run_engine_arm(run: Run, part: str, arm: str, prompts: list, ckpt: str, max_new: int) -> None:
    args = run.args
    extra, env = (ARMS_A if part == 'a' else ARMS_B)[arm]
    record_dir = Path(args.work) / part / arm
    entry = dict(record_dir=str(record_dir), env=env, engine=extra)
    run.result[f'part_{part}']['arms'][arm] = entry
    if run.time_left() < args.min_arm_seconds:
        entry['error'] = f'skipped: {run.time_left():.0f} s of the time budget left'
        log(f'{part}/{arm}: {entry["error"]}')
        return
    # no silent change of dtype: a failed --tiny-dtype run is retried only with an explicit --fallback-dtype
    dtypes = [None] if part == 'a' else [args.tiny_dtype] + ([args.fallback_dtype] if args.fallback_dtype else [])
    for dtype in dtypes:
        log(f'{part}/{arm}: running (dtype {dtype or "checkpoint"})')
        try:
            outcome = run_arm(ckpt, prompts, max_new, str(record_dir), engine_kwargs(args, extra), env, dtype)
            run.tokens[(part, arm)] = outcome.pop('tokens')
            entry.update(outcome, status='ok')
            entry.pop('error', None)
            log(f'{part}/{arm}: ok ({outcome["build_seconds"]} s build, {outcome["generate_seconds"]} s generate)')
            break
        except (Exception, SystemExit) as error:  # reported, not hidden (lmdeploy's env checks call sys.exit)
            entry.setdefault('failed_attempts', []).append(
                dict(dtype=dtype, error=f'{type(error).__name__}: {error}', traceback=traceback.format_exc()[-3000:]))
            entry.update(status='failed', error=f'{type(error).__name__}: {error}')
            log(f'{part}/{arm}: failed with dtype {dtype}: {type(error).__name__}: {error}')
    run.save()


def compare_a(run: Run, arm: str) -> None:
    key = f'stock_vs_{arm}'
    arms = run.result['part_a']['arms']
    if arms.get('stock', {}).get('status') != 'ok' or arms.get(arm, {}).get('status') != 'ok':
        run.result['part_a']['comparisons'][key] = dict(error='an arm is missing or failed')
        return
    try:
        comparison = compare_recordings(arms['stock']['record_dir'], arms[arm]['record_dir'], run.args.factor)
        comparison['tokens'] = token_differences(run.tokens[('a', 'stock')], run.tokens[('a', arm)])
        run.result['part_a']['comparisons'][key] = comparison
        run.add_table(f'(a) SDAR-1.7B random bf16: stock (A) vs {arm} (B)', comparison)
    except Exception as error:
        run.result['part_a']['comparisons'][key] = dict(error=f'{type(error).__name__}: {error}',
                                                        traceback=traceback.format_exc()[-3000:])
        log(f'compare {key} failed: {error}')
    run.save()


def start_reference_workers(run: Run, prompts: list, meta: dict) -> dict:
    args = run.args
    workers = {}
    threads = max(1, (os.cpu_count() or 4) // len(REFERENCE_MODES))
    for arm, (delayed, commit) in REFERENCE_MODES.items():
        folder = Path(args.work) / 'b' / 'reference'
        folder.mkdir(parents=True, exist_ok=True)
        spec = dict(checkpoint=args.ckpt_b, prompts=prompts, meta=meta, max_new_tokens=args.max_new_b,
                    delayed_cache=delayed, commit_mode=commit, dtype=args.reference_dtype, threads=threads,
                    chunk_size=args.reference_chunk)
        (folder / f'{arm}.json').write_text(json.dumps(spec))
        out = folder / f'{arm}.pt'
        out.unlink(missing_ok=True)
        log_file = open(folder / f'{arm}.log', 'w')
        process = subprocess.Popen([sys.executable, str(HERE / 'equivalence' / 'reference_worker.py'),
                                    str(folder / f'{arm}.json'), str(out)], stdout=log_file, stderr=subprocess.STDOUT)
        workers[arm] = (process, out, folder / f'{arm}.log')
    log(f'reference workers started ({threads} threads each, {args.reference_dtype})')
    return workers


def compare_b(run: Run, arm: str, worker) -> None:
    process, out, log_path = worker
    refs = run.result['part_b']['references']
    key = f'engine_{arm}_vs_reference'
    comparisons = run.result['part_b']['comparisons']
    try:
        process.wait(timeout=max(1.0, run.time_left() - 10))
    except subprocess.TimeoutExpired:
        process.kill()
    if process.returncode != 0:
        refs[arm] = dict(error=f'reference worker exit {process.returncode} (negative: killed at the time budget)',
                         log_tail=Path(log_path).read_text()[-3000:])
        comparisons[key] = dict(error='the reference run is missing')
        run.save()
        return
    engine_arm = run.result['part_b']['arms'].get(arm, {})
    try:
        reference, info = load_sequences(out)
        refs[arm] = {k: v for k, v in info.items() if k != 'tokens'}
        if engine_arm.get('status') != 'ok':
            comparisons[key] = dict(error='the engine arm is missing or failed')
            return
        comparison = compare_to_reference_sequences(engine_arm['record_dir'], reference, run.args.factor)
        comparison['tokens'] = token_differences(run.tokens[('b', arm)], info['tokens'])
        engine_meta = load_meta(engine_arm['record_dir'])  # the reference ran with the meta guessed up front
        comparison['summary']['meta_mismatch'] = [k for k in SHARED_META
                                                  if engine_meta.get(k) != run.reference_meta.get(k)]
        comparisons[key] = comparison
        run.add_table(f'(b) tiny SDAR: engine {arm} (A) vs CPU reference {REFERENCE_MODES[arm]} '
                      f'{run.args.reference_dtype} (B)', comparison)
    except Exception as error:
        comparisons[key] = dict(error=f'{type(error).__name__}: {error}', traceback=traceback.format_exc()[-3000:])
        log(f'compare {key} failed: {error}')
    finally:
        run.save()


def reference_meta(args) -> dict:
    """What the engine recorder will write as meta, known in advance (probe ids depend on the vocab only)."""
    from lmdeploy_focus_dev.testing.step_recorder import TOPK, probe_ids
    config = json.loads((Path(args.ckpt_b) / 'config.json').read_text())
    return dict(block_length=args.block_length, mask_token_id=config['mask_token_id'],
                unmasking_strategy='low_confidence_static', denoising_steps=args.denoising_steps,
                confidence_threshold=0.85, probe_ids=probe_ids(config['vocab_size']).tolist(), topk=TOPK)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True)
    parser.add_argument('--ckpt-a', required=True, help='random SDAR-1.7B (bf16) checkpoint')
    parser.add_argument('--ckpt-b', required=True, help='random tiny SDAR fp32 checkpoint')
    parser.add_argument('--work', default='/tmp/equivalence', help='recordings (not copied to OUT)')
    parser.add_argument('--parts', nargs='+', default=['a', 'b'], choices=['a', 'b'])
    parser.add_argument('--prompts-a', type=int, default=16)
    parser.add_argument('--input-len-a', type=int, default=256)
    parser.add_argument('--max-new-a', type=int, default=96)
    parser.add_argument('--prompts-b', type=int, default=8)
    parser.add_argument('--input-len-b', type=int, default=40)
    parser.add_argument('--max-new-b', type=int, default=64)
    parser.add_argument('--block-length', type=int, default=32)
    parser.add_argument('--denoising-steps', type=int, default=8, help='static unmasking: L / steps tokens per step')
    parser.add_argument('--tiny-dtype', default='float32')
    parser.add_argument('--fallback-dtype', default=None,
                        help='tiny engine dtype to retry with if --tiny-dtype fails (default: none, the failure '
                        'is reported; the delayed-cache kernels run fp32 in true fp32)')
    parser.add_argument('--reference-dtype', default='float64', choices=['float64', 'float32'])
    parser.add_argument('--reference-chunk', type=int, default=4, help='prompts per reference batch (memory)')
    parser.add_argument('--factor', type=float, default=2.0, help='near-tie factor K')
    parser.add_argument('--time-budget', type=float, default=450.0, help='seconds for the whole script')
    parser.add_argument('--min-arm-seconds', type=float, default=45.0, help='skip an arm with less time left')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    import torch
    run = Run(args)
    run.result.update(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None, torch=torch.__version__)
    prompts = {'a': make_prompts(args.prompts_a, args.input_len_a, args.seed),
               'b': make_prompts(args.prompts_b, args.input_len_b, args.seed + 1)}
    ckpts = {'a': args.ckpt_a, 'b': args.ckpt_b}
    max_new = {'a': args.max_new_a, 'b': args.max_new_b}
    workers = {}
    if 'b' in args.parts:
        try:
            run.reference_meta = reference_meta(args)
            workers = start_reference_workers(run, prompts['b'], run.reference_meta)
        except Exception as error:
            run.result['part_b']['references']['error'] = f'{type(error).__name__}: {error}'
    run.save()

    for part, arm in SCHEDULE:
        if part not in args.parts:
            continue
        run_engine_arm(run, part, arm, prompts[part], ckpts[part], max_new[part])
        if part == 'a' and arm != 'stock':
            compare_a(run, arm)
    for arm, worker in workers.items():
        compare_b(run, arm, worker)
    run.result['seconds'] = round(time.perf_counter() - run.start, 1)
    run.save()
    log(f'done in {run.result["seconds"]} s')


if __name__ == '__main__':
    main()
