"""FOCUS on the GPU: equivalence with delayed cache at alpha >= L, throughput of every arm in one
process, and a per-phase breakdown of a FOCUS decode step.

    python checks/focus_check.py CKPT --out result.json [--batch-sizes 64 128 256] [--graphs]

Arms (all with dllm_track, static unmasking, greedy, ignore_eos): stock; delayed cache (exact /
fast commit); FOCUS leftmost and importance at alpha 1.5. Random weights: the arms measure cost at
the eviction rate each policy produces, not FOCUS's decisions (see BENCHMARKS.md).
"""
import argparse
import json
import os
import sys
import time

from delayed_cache_check import first_difference
from stock_sdar_smoke import random_text_prompts, run_arm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms')
from arms import arm_fields  # noqa: E402

from lmdeploy_focus.strategies.dllm.phase_timer import PHASE_TIMING_ENV  # noqa: E402

ARMS = {name: arm_fields(name, stock_steps=False, dllm_track=True)
        for name in ('stock', 'delayed_exact', 'delayed_fast', 'focus_leftmost', 'focus_leftmost_fast', 'focus_importance')}


def run(args, arm, batch_size, output_len, eager, return_tokens, **overrides):
    kwargs = {**ARMS[arm], **overrides}
    try:
        result = run_arm(args.model_path, batch_size, args.input_len, output_len, eager, 'low_confidence_static',
                         args.denoising_steps, args.seed, return_tokens=return_tokens, **kwargs)
    except Exception as error:  # an arm that fails is reported, not hidden
        result = dict(batch_size=batch_size, eager_mode=eager, status='failed', error=f'{type(error).__name__}: {error}')
    result['arm'] = arm
    result['engine_kwargs'] = kwargs
    print(json.dumps({k: v for k, v in result.items() if k != 'token_ids'}), flush=True)
    return result


def equivalence(args, block_length):
    """alpha >= L evicts nothing: FOCUS must reproduce delayed cache alone token for token."""
    runs = {name: run(args, arm, args.check_batch_size, args.check_output_len, True, True, **extra)
            for name, arm, extra in [('delayed_exact', 'delayed_exact', {}),
                                     ('focus_alpha_L', 'focus_importance', dict(dllm_focus_alpha=float(block_length))),
                                     ('shadow', 'focus_importance', dict(dllm_focus_shadow=True))]}
    base = runs['delayed_exact'].get('token_ids')
    report = {}
    for name in ('focus_alpha_L', 'shadow'):
        tokens = runs[name].get('token_ids')
        if base is None or tokens is None:
            report[name] = dict(status='failed', error=runs[name].get('error') or runs['delayed_exact'].get('error'))
            continue
        diffs = [first_difference(a, b) for a, b in zip(base, tokens)]
        report[name] = dict(identical_sequences=sum(d is None for d in diffs), sequences=len(diffs),
                            first_difference_positions=[d for d in diffs if d is not None],
                            dllm_stats=runs[name].get('dllm_stats'))
    return report


def phase_breakdown(args, arm, batch_size):
    """Mean and median GPU ms per phase of a decode step (LMDEPLOY_FOCUS_PHASE_TIMING: CUDA events, one extra sync
    per step while profiling), over one generation of 64 tokens at ``batch_size``."""
    import os
    os.environ[PHASE_TIMING_ENV] = '1'
    try:
        result = run_arm(args.model_path, batch_size, args.input_len, 64, not args.profile_graphs,
                         'low_confidence_static', args.denoising_steps, args.seed, **ARMS[arm])
    finally:
        os.environ.pop(PHASE_TIMING_ENV, None)
    return dict(arm=arm, batch_size=batch_size, output_len=64, cuda_graphs=args.profile_graphs,
                output_tok_per_s=result.get('output_tok_per_s'),
                phase_timing=result.get('phase_timing'))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_path')
    parser.add_argument('--out', required=True)
    parser.add_argument('--check-batch-size', type=int, default=16)
    parser.add_argument('--check-output-len', type=int, default=96)
    parser.add_argument('--batch-sizes', type=int, nargs='*', default=[64, 128, 256])
    parser.add_argument('--input-len', type=int, default=256)
    parser.add_argument('--output-len', type=int, default=256)
    parser.add_argument('--denoising-steps', type=int, default=8)
    parser.add_argument('--block-length', type=int, default=32)
    parser.add_argument('--arms', nargs='+', default=['stock', 'delayed_exact', 'focus_leftmost', 'focus_importance'])
    parser.add_argument('--graphs', action='store_true', help='also time with CUDA graphs (eager_mode=False)')
    parser.add_argument('--profile-arms', nargs='*', default=['focus_importance', 'delayed_exact'])
    parser.add_argument('--profile-batch-size', type=int, default=256)
    parser.add_argument('--profile-graphs', action='store_true', help='profile with CUDA graphs (default: eager)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--skip-check', action='store_true')
    args = parser.parse_args()

    import torch
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime('%Y-%m-%d'),
                  model=args.model_path, input_len=args.input_len, output_len=args.output_len,
                  denoising_steps=args.denoising_steps, unmasking='low_confidence_static')

    def save():  # after every piece, so a run cut short still leaves its results
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)

    if not args.skip_check:
        result['equivalence_alpha_ge_L'] = equivalence(args, args.block_length)
        print(json.dumps(result['equivalence_alpha_ge_L']), flush=True)
        save()
    result['throughput'] = []
    for bs in args.batch_sizes:
        for eager in ([True, False] if args.graphs else [True]):
            for arm in args.arms:
                result['throughput'].append(run(args, arm, bs, args.output_len, eager, False))
                save()
    result['phase_breakdown'] = []
    for arm in args.profile_arms:
        try:
            result['phase_breakdown'].append(phase_breakdown(args, arm, args.profile_batch_size))
        except Exception as error:
            result['phase_breakdown'].append(dict(arm=arm, status='failed', error=f'{type(error).__name__}: {error}'))
        print(json.dumps(result['phase_breakdown'][-1]), flush=True)
        save()


if __name__ == '__main__':
    main()
