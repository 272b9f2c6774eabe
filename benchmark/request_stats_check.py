"""GPU check of the per-request DLLM statistics (``dllm_track``): every request's final
``EngineOutput.req_metrics.dllm`` is present, and the per-request totals add up to the run totals.

    python benchmark/request_stats_check.py MODEL_DIR --out result.json [--arms stock focus]

Drives the in-process engine through ``Engine.create_instance().async_stream_infer`` (where upstream
hands out request metrics), several requests at once so rows of mixed batches must land on the
right request.
"""
import argparse
import asyncio
import json
import random

ARMS = {
    'stock': dict(dllm_track=True),
    'delayed_exact': dict(dllm_enable_delayed_cache=True, dllm_track=True),
    'focus': dict(dllm_enable_focus=True, dllm_focus_alpha=1.5, dllm_track=True),
    'shadow': dict(dllm_enable_focus=True, dllm_focus_alpha=1.5, dllm_focus_shadow=True, dllm_track=True),
}


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
    per_request = [getattr(o.req_metrics, 'dllm', None) for o in outs]
    missing = sum(d is None for d in per_request)
    sums = {k: sum(d[k] for d in per_request if d is not None) for k in KEYS}
    mismatched = {k: (sums[k], run_totals[k]) for k in KEYS
                  if abs(sums[k] - run_totals[k]) > 1e-6 * max(1.0, abs(run_totals[k]))}
    return dict(arm=arm, requests=len(prompts), missing_request_metrics=missing,
                output_lengths=[len(o.token_ids) for o in outs], per_request=per_request,
                run_totals=run_totals, per_request_sums=sums, mismatched_keys=mismatched,
                ok=missing == 0 and not mismatched)


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
        json.dump(dict(command=' '.join(['python benchmark/request_stats_check.py', args.model_path]), results=results),
                  f, indent=1)
    print('ALL OK' if all(r.get('ok') for r in results) else 'FAILED')


if __name__ == '__main__':
    main()
