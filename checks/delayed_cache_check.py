"""Delayed cache on the GPU: equivalence with stock decoding and throughput, arms in one process.

    python checks/delayed_cache_check.py CKPT --out result.json [--batch-sizes 64 256] [--check-only]

Arms: stock; delayed cache with every position processed (``LMDEPLOY_FOCUS_DELAYED_CACHE_PROCESS_ALL``,
must reproduce stock decoding); delayed cache, commit modes exact and fast. Greedy, ignore_eos,
static unmasking (4 tokens per step at block 32). Random weights: cost, not quality.
"""
import argparse
import json
import os
import sys
import time

from stock_sdar_smoke import run_arm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms')
from arms import arm_fields  # noqa: E402

from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import PROCESS_ALL_ENV  # noqa: E402

# delayed_process_all: delayed-cache bookkeeping, every step forwards the whole block (its ARM_ENV switch)
# stock_steps=False: the checks' small batches run the delayed-cache step itself (not --dllm-stock-step-rows' stock step)
ARMS = {'stock': arm_fields('stock', stock_steps=False),
        'delayed_process_all': arm_fields('delayed_exact', stock_steps=False),
        'delayed_exact': arm_fields('delayed_exact', stock_steps=False),
        'delayed_fast': arm_fields('delayed_fast', stock_steps=False)}
ARM_ENV = {
    'delayed_process_all': PROCESS_ALL_ENV,
}


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(args, arm, batch_size, output_len, eager, return_tokens):
    for name in ARM_ENV.values():
        os.environ.pop(name, None)
    if arm in ARM_ENV:
        os.environ[ARM_ENV[arm]] = '1'
    try:
        result = run_arm(args.model_path, batch_size, args.input_len, output_len, eager, 'low_confidence_static',
                         args.denoising_steps, args.seed, return_tokens=return_tokens, **ARMS[arm])
    except Exception as error:  # an arm that fails is reported, not hidden
        result = dict(batch_size=batch_size, eager_mode=eager, status='failed', error=f'{type(error).__name__}: {error}')
    result['arm'] = arm
    print(json.dumps({k: v for k, v in result.items() if k != 'token_ids'}), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_path')
    parser.add_argument('--out', required=True)
    parser.add_argument('--check-batch-size', type=int, default=16)
    parser.add_argument('--check-output-len', type=int, default=96)
    parser.add_argument('--batch-sizes', type=int, nargs='*', default=[])
    parser.add_argument('--input-len', type=int, default=256)
    parser.add_argument('--output-len', type=int, default=256)
    parser.add_argument('--denoising-steps', type=int, default=8)
    parser.add_argument('--arms', nargs='+', default=['stock', 'delayed_exact', 'delayed_fast'])
    parser.add_argument('--graphs', action='store_true', help='also time with CUDA graphs (eager_mode=False)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-check', action='store_true')
    args = parser.parse_args()

    import torch
    check = {} if args.skip_check else {
        arm: run(args, arm, args.check_batch_size, args.check_output_len, True, True)
        for arm in ('stock', 'delayed_process_all', 'delayed_exact', 'delayed_fast')}
    stock_tokens = check.get('stock', {}).get('token_ids')
    equivalence = {}
    for arm, result in check.items():
        if arm == 'stock' or stock_tokens is None or 'token_ids' not in result:
            continue
        diffs = [first_difference(a, b) for a, b in zip(stock_tokens, result['token_ids'])]
        equivalence[arm] = dict(identical_sequences=sum(d is None for d in diffs), sequences=len(diffs),
                                first_difference_positions=[d for d in diffs if d is not None])
    print(json.dumps(equivalence), flush=True)

    timing = []
    for bs in args.batch_sizes:
        for eager in ([True, False] if args.graphs else [True]):
            for arm in args.arms:
                timing.append(run(args, arm, bs, args.output_len, eager, False))
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime('%Y-%m-%d'),
                  model=args.model_path, input_len=args.input_len, output_len=args.output_len,
                  denoising_steps=args.denoising_steps, unmasking='low_confidence_static',
                  equivalence_check=dict(batch_size=args.check_batch_size, output_len=args.check_output_len,
                                         results=equivalence,
                                         runs=[{k: v for k, v in r.items() if k != 'token_ids'} for r in check.values()]),
                  throughput=timing)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
