"""CUDA graphs vs eager (issue 14): greedy outputs of stock, delayed cache and FOCUS, token for token.

    python3 checks/graph_equivalence_check.py --model DIR [--model DIR ...] --out OUT.json

Each (model, arm) runs twice on the same random prompt ids, once eager and once with CUDA graphs
(one engine at a time, in-process), greedy, ignore_eos, static unmasking (4 tokens per step) or, with
``--unmasking dynamic``, a confidence threshold (``--threshold``, 0.9 as the benchmarks). The ``-fast`` arms use the fast commit.
Reports per arm the sequences whose outputs are identical, and for the others the first
differing output position. The graph engine then resets its graph runner as a weight update while serving
does (no warm-up follows) and runs the prompts again: ``after_graph_reset`` compares those outputs with eager's
too, ``buckets_after_graph_reset`` lists the step-graph batch buckets captured again at their steps.
The graph arm pads the batch to a captured bucket and the deep rows to a row bucket, so a difference can
come from bf16 GEMMs of a different row count (a near-tie flipping), not only from a bug: a bug shows as
many sequences differing early, a near-tie as a few differing late.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms', 'throughput', 'quality')
from arms import arm_fields  # noqa: E402
from quality.engine_backend import release_device_memory  # noqa: E402  (same between engines)

DEFAULT_ARMS = ('stock', 'delayed', 'focus-importance', 'focus-leftmost')
# the auto arms replay the α controller's update graph (strategies/dllm/controller_graph.py) under graphs
ARMS = {name: arm_fields(name, stock_steps=False) for name in DEFAULT_ARMS + ('delayed-fast', 'focus-importance-fast',
                                                          'focus-leftmost-fast', 'focus-auto', 'focus-auto-leftmost')}
UNMASKING = {'static': 'low_confidence_static', 'dynamic': 'low_confidence_dynamic'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', action='append', required=True, help='checkpoint directory (repeatable)')
    p.add_argument('--out', required=True, help='JSON report')
    p.add_argument('--arms', nargs='+', default=list(DEFAULT_ARMS), choices=list(ARMS))
    p.add_argument('--unmasking', default='static', choices=list(UNMASKING),
                   help='static: block_length/4 steps per block; dynamic: unmask above --threshold')
    p.add_argument('--threshold', type=float, default=0.9, help='dllm_confidence_threshold of --unmasking dynamic')
    p.add_argument('--num-prompts', type=int, default=24)
    p.add_argument('--max-new-tokens', type=int, default=96)
    p.add_argument('--block-length', type=int, default=32)
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def random_prompts(vocab: int, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(5, 120))] for _ in range(count)]


async def generate(engine, prompts, max_new_tokens, first_session=1):
    from lmdeploy.messages import GenerationConfig
    config = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True, do_sample=False, top_k=1)

    engine.start_loop()

    async def one(session_id, ids):
        instance = engine.create_instance()
        tokens = []
        async for out in instance.async_stream_infer(session_id, ids, config):
            tokens += list(out.token_ids)
        return tokens

    return await asyncio.gather(*(one(first_session + i, ids) for i, ids in enumerate(prompts)))


async def generate_reset_generate(engine, prompts, max_new_tokens):
    """The prompts, then upstream's graph-runner reset as a weight update while serving does it (no warm-up after
    it: patch 14 drops the step graphs and each batch bucket is captured again at its next step), then the prompts
    again: ``(first outputs, outputs after the reset, the step graphs' batch buckets after it)``."""
    first = await generate(engine, prompts, max_new_tokens)
    agent = engine.executor.model_agent
    agent.reset_graph_runner()
    model = agent.patched_model.get_model()
    dropped = getattr(getattr(model, 'step_graphs', None), 'buckets', None)
    if dropped:
        raise RuntimeError(f'the graph-runner reset left step graphs {sorted(dropped)}')
    again = await generate(engine, prompts, max_new_tokens, first_session=len(prompts) + 1)
    buckets = sorted(getattr(getattr(model, 'step_graphs', None), 'buckets', {}))
    return first, again, buckets


def unmasking_fields(args) -> dict:
    if args.unmasking == 'static':
        return dict(dllm_unmasking_strategy=UNMASKING['static'], dllm_denoising_steps=args.block_length // 4)
    return dict(dllm_unmasking_strategy=UNMASKING['dynamic'], dllm_denoising_steps=args.block_length,
                dllm_confidence_threshold=args.threshold)


def run_engine(model, arm_kwargs, eager, prompts, args, generate_fn=None, before_close=None):
    """``(outputs, engine build seconds)`` of one engine; ``generate_fn(engine, prompts, max_new_tokens)`` (default
    :func:`generate`); ``before_close()``, if given, runs while the engine is still up and its result comes third."""
    from lmdeploy import PytorchEngineConfig
    from lmdeploy.pytorch.engine import Engine
    config = PytorchEngineConfig(max_batch_size=len(prompts), cache_max_entry_count=0.15, block_size=64,
                                 eager_mode=eager, dllm_block_length=args.block_length,
                                 **unmasking_fields(args), **arm_kwargs)
    start = time.perf_counter()
    engine = Engine.from_pretrained(model, engine_config=config, trust_remote_code=True)
    built = time.perf_counter() - start
    try:
        outputs = asyncio.run((generate_fn or generate)(engine, prompts, args.max_new_tokens))
        if before_close is not None:
            return outputs, built, before_close()
    finally:
        engine.close()
        # upstream's documented release (close, then collect and empty the cache): without it the next engine of a
        # big model ran out of memory (LLaDA2.0-mini: a second engine got 987 KV blocks instead of 2,814, the third
        # one OOM, H100, 2026-12-06)
        del engine
        release_device_memory()
    return outputs, built


def compare(eager, graphs):
    identical, first_diffs = 0, []
    for a, b in zip(eager, graphs):
        if a == b:
            identical += 1
            continue
        first_diffs.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    return dict(identical=identical, sequences=len(eager), first_difference_positions=sorted(first_diffs))


def main():
    args = parse_args()
    report = dict(command='python3 checks/graph_equivalence_check.py ' + ' '.join(sys.argv[1:]),
                  settings=vars(args), results=[])
    for model in args.model:
        with open(f'{model}/config.json') as f:
            cfg = json.load(f)
        vocab = min(cfg['vocab_size'], cfg.get('mask_token_id', cfg['vocab_size']))
        prompts = random_prompts(vocab, args.num_prompts, args.seed)
        for arm in args.arms:
            row = dict(model=model, arm=arm)
            try:
                eager, eager_build_s = run_engine(model, ARMS[arm], True, prompts, args)
                (graphs, after_reset, buckets), graph_build_s = run_engine(model, ARMS[arm], False, prompts, args,
                                                                          generate_fn=generate_reset_generate)
                row.update(compare(eager, graphs), eager_engine_start_s=round(eager_build_s, 1),
                           graph_engine_start_s=round(graph_build_s, 1),
                           output_tokens=sum(len(o) for o in graphs),
                           # after a graph-runner reset with no warm-up (a weight update while serving): the same
                           # outputs again, from the batch buckets captured again at their steps (none for stock)
                           after_graph_reset=compare(eager, after_reset), buckets_after_graph_reset=buckets,
                           after_graph_reset_vs_first_run=compare(graphs, after_reset))
                if ARMS[arm] and not buckets:  # a delayed-cache / FOCUS arm ran eagerly after the reset
                    row['error'] = 'no step graph captured again after the graph-runner reset'
            except Exception as e:  # noqa: BLE001  recorded, the other arms go on
                row.update(error=f'{type(e).__name__}: {e}')
            print(json.dumps(row), flush=True)
            report['results'].append(row)
            with open(args.out, 'w') as f:
                json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
