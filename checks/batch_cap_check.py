"""Patch 19 on a real engine: the DLLM batch cap holds for a block length read from the model.

    python3 checks/batch_cap_check.py --model models/tiny-sdar-5m-b32 --out OUT.json

Two engines at their default ``max_batch_size`` (CUDA graphs, FOCUS importance, the defaults a user of
``lmdeploy serve api_server MODEL --focus`` gets): ``model`` reads the block length from the checkpoint,
``configured`` passes ``dllm_block_length`` as upstream's flag does. Passes when both engines end up with the same
batch (engine config, scheduler, cache config and the largest CUDA graph capture size), that batch keeps a decode
step's ``B · L`` rows within ``max_prefill_token_num``, and both engines give the same greedy tokens.
"""
import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import graph_equivalence_check as gec  # noqa: E402  (its prompts and generation loop)

from arms import arm_fields  # noqa: E402  (graph_equivalence_check loaded the benchmark packages)
from quality.engine_backend import release_device_memory  # noqa: E402


def engine_batch(model, block_length, prompts, max_new_tokens):
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.pytorch.backends.graph_runner import _get_capture_batch_size_impl
    from lmdeploy.pytorch.engine import Engine
    config = PytorchEngineConfig(cache_max_entry_count=0.15, block_size=64, eager_mode=False,
                                 dllm_block_length=block_length, dllm_unmasking_strategy='low_confidence_static',
                                 dllm_denoising_steps=8, **arm_fields('focus-importance'))
    start = time.perf_counter()
    engine = Engine.from_pretrained(model, engine_config=config, trust_remote_code=True)
    try:
        cache = engine.cache_config
        row = dict(block_length_given=block_length, engine_start_s=round(time.perf_counter() - start, 1),
                   max_batch_size=engine.engine_config.max_batch_size,
                   scheduler_max_batches=engine.scheduler_config.max_batches, cache_max_batches=cache.max_batches,
                   max_prefill_token_num=engine.engine_config.max_prefill_token_num,
                   largest_capture_batch=max(cache.cudagraph_capture_batch_sizes
                                             or _get_capture_batch_size_impl(cache.max_batches)))
        row['outputs'] = asyncio.run(gec.generate(engine, prompts, max_new_tokens))
    finally:
        engine.close()
        del engine
        release_device_memory()
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--block-length', type=int, default=32, help='what the model folder says (SDAR -b<N>)')
    p.add_argument('--num-prompts', type=int, default=8)
    p.add_argument('--max-new-tokens', type=int, default=64)
    args = p.parse_args()
    with open(f'{args.model}/config.json') as f:
        cfg = json.load(f)
    prompts = gec.random_prompts(min(cfg['vocab_size'], cfg.get('mask_token_id', cfg['vocab_size'])),
                                 args.num_prompts, 0)
    rows = {'model': engine_batch(args.model, None, prompts, args.max_new_tokens),
            'configured': engine_batch(args.model, args.block_length, prompts, args.max_new_tokens)}
    fields = ('max_batch_size', 'scheduler_max_batches', 'cache_max_batches', 'largest_capture_batch')
    a, b = rows['model'], rows['configured']
    checks = {
        'same batch with the block length from the model as configured': all(a[f] == b[f] for f in fields),
        'B * L within max_prefill_token_num': a['max_batch_size'] * args.block_length <= a['max_prefill_token_num'],
        'same greedy tokens': a['outputs'] == b['outputs'],
    }
    for row in rows.values():
        row['output_tokens'] = sum(len(o) for o in row.pop('outputs'))
    report = dict(command='python3 checks/batch_cap_check.py ' + ' '.join(sys.argv[1:]), engines=rows,
                  checks=checks, passed=all(checks.values()))
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    sys.exit(0 if report['passed'] else 1)


if __name__ == '__main__':
    main()
