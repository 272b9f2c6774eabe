"""GPU check of the per-request DLLM statistics (``dllm_track``): every request's final
``EngineOutput.req_metrics.dllm`` is present, and the per-request totals add up to the run totals
(up to the one step upstream runs ahead for a request that has just finished).

    python checks/request_stats_check.py MODEL_DIR --out result.json [--arms stock focus]

Drives the in-process engine through ``Engine.create_instance().async_stream_infer`` (where upstream
hands out request metrics), several requests at once so rows of mixed batches must land on the
right request.
"""
import argparse
import asyncio
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms', 'throughput', 'quality')
from arms import arm_fields  # noqa: E402
from quality.engine_backend import release_device_memory  # noqa: E402  (same between engines)

ARMS = {name: arm_fields(name, stock_steps=False, dllm_track=True) for name in ('stock', 'delayed_exact', 'focus', 'shadow')}


async def _one(engine, session_id, input_ids, gen_config):
    instance = engine.create_instance()
    last = None
    async for out in instance.async_stream_infer(session_id, input_ids, gen_config=gen_config):
        last = out
    await instance.async_end(session_id)
    return last


async def _run_arm(model, arm, prompts, max_new_tokens, threshold):
    from lmdeploy import GenerationConfig, PytorchEngineConfig
    from lmdeploy.pytorch.engine import Engine
    from lmdeploy_focus.stats import read_run_stats
    from lmdeploy_focus.strategies.dllm.run_stats import KEYS
    config = PytorchEngineConfig(eager_mode=True, max_batch_size=len(prompts), cache_max_entry_count=0.3,
                                 dllm_unmasking_strategy='low_confidence_dynamic',
                                 dllm_confidence_threshold=threshold, **ARMS[arm])
    engine = Engine.from_pretrained(model, engine_config=config)
    try:
        read_run_stats(reset=True)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, top_k=1, ignore_eos=True)
        outs = await asyncio.gather(*[_one(engine, i + 1, p, gen) for i, p in enumerate(prompts)])
        run_totals = read_run_stats(reset=True)
    finally:
        engine.close()
        del engine
        release_device_memory()  # the next arm's engine sizes its KV cache from a clean device
    per_request = [getattr(o.req_metrics, 'dllm', None) for o in outs]
    missing = sum(d is None for d in per_request)
    sums = {k: sum(d[k] for d in per_request if d is not None) for k in KEYS}
    # The run totals count every forwarded sequence-step; upstream schedules a step ahead of reading
    # outputs, so a request that just finished rides along once more (its row counts for the run,
    # the request has already ended). So: tokens decoded must agree exactly; steps and rows may
    # exceed the per-request sums by at most one step per request.
    overrun_steps = run_totals['decode_steps'] - sums['decode_steps']
    checks = dict(every_request_has_metrics=missing == 0,
                  generated_tokens_equal=sums['generated_tokens'] == run_totals['generated_tokens'],
                  overrun_steps_at_most_one_per_request=0 <= overrun_steps <= len(prompts),
                  rows_never_exceed_run=all(sums[k] <= run_totals[k] + 1e-6 for k in KEYS))
    return dict(arm=arm, requests=len(prompts), missing_request_metrics=missing, overrun_steps=overrun_steps,
                per_request=per_request, run_totals=run_totals, per_request_sums=sums, checks=checks,
                ok=all(checks.values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model_path')
    parser.add_argument('--out', required=True)
    parser.add_argument('--arms', nargs='+', default=['stock', 'delayed_exact', 'focus', 'shadow'], choices=ARMS)
    parser.add_argument('--num-requests', type=int, default=12)
    parser.add_argument('--max-new-tokens', type=int, default=80)  # ends mid-block for block 32
    parser.add_argument('--threshold', type=float, default=0.9)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # byte-level prompts of varied lengths (the tiny model's tokenizer maps bytes 0..255 to ids 0..255)
    prompts = [[rng.randrange(32, 127) for _ in range(rng.randrange(8, 120))] for _ in range(args.num_requests)]
    results = []
    for arm in args.arms:
        try:
            result = asyncio.run(_run_arm(args.model_path, arm, prompts, args.max_new_tokens, args.threshold))
        except Exception as error:  # a failing arm is reported, the others still run
            result = dict(arm=arm, ok=False, error=f'{type(error).__name__}: {error}')
        print(json.dumps({k: v for k, v in result.items() if k != 'per_request'}), flush=True)
        results.append(result)
    with open(args.out, 'w') as f:
        json.dump(dict(command=' '.join(['python checks/request_stats_check.py', args.model_path]), results=results),
                  f, indent=1)
    print('ALL OK' if all(r.get('ok') for r in results) else 'FAILED')


if __name__ == '__main__':
    main()
