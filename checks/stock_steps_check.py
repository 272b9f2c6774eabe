"""Stock steps at small batches (``--dllm-stock-step-rows``): with FOCUS at its defaults, a batch within the stock rows
decodes exactly as stock, token for token, and a batch that grows past them runs FOCUS steps.

    python3 checks/stock_steps_check.py --model DIR [--model DIR ...] --out OUT.json

Per model, CUDA graphs on every engine (``--eager`` for eager), greedy, ignore_eos, static unmasking (4 tokens per step):

* ``within``: ``--num-small`` prompts (default 2: bs <= 2 is stock at block 32) on a stock engine and on a FOCUS
  importance engine (``dllm_track``): identical outputs, and every decode step of the FOCUS engine counted as a stock
  step (``stock_steps`` == ``decode_steps``).
* ``growing``: one request, then ``--num-join`` more while it runs, on the FOCUS engine: the batch crosses the stock
  rows, so steps switch from stock to FOCUS mid-block; the run must finish with both kinds of step counted.
"""
import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import graph_equivalence_check as gec  # noqa: E402  (its prompts, engine runner and comparison)

from arms import arm_fields  # noqa: E402  (graph_equivalence_check loaded the benchmark packages)

FOCUS = arm_fields('focus-importance', dllm_track=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', action='append', required=True, help='checkpoint directory (repeatable)')
    p.add_argument('--out', required=True, help='JSON report')
    p.add_argument('--num-small', type=int, default=2, help='prompts of the within-the-stock-rows comparison')
    p.add_argument('--num-join', type=int, default=7, help='requests joining the growing batch')
    p.add_argument('--max-new-tokens', type=int, default=96)
    p.add_argument('--block-length', type=int, default=32)
    p.add_argument('--eager', action='store_true')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    args.unmasking, args.threshold = 'static', 0.9  # gec.unmasking_fields
    return args


def _stats():
    from lmdeploy_focus.stats import read_run_stats
    return read_run_stats(reset=True) or {}


async def _growing(engine, prompts, max_new_tokens):
    """The first prompt alone, the others once it has made some progress (its first block committed)."""
    from lmdeploy.messages import GenerationConfig
    config = GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=True, do_sample=False, top_k=1)
    engine.start_loop()
    first_block = asyncio.Event()

    async def one(session_id, ids, wait):
        if wait:
            await first_block.wait()
        tokens = []
        async for out in engine.create_instance().async_stream_infer(session_id, ids, config):
            tokens += list(out.token_ids)
            first_block.set()
        return tokens

    return await asyncio.gather(*(one(i + 1, ids, i > 0) for i, ids in enumerate(prompts)))


def run(model, fields, prompts, args, growing=False):
    """Outputs and run statistics (read before the engine closes, as its statistics go with it) of one engine."""
    outputs, _, counts = gec.run_engine(model, fields, args.eager, prompts, args,
                                        generate_fn=_growing if growing else None, before_close=_stats)
    return outputs, counts


def main():
    args = parse_args()
    report = dict(command='python3 checks/stock_steps_check.py ' + ' '.join(sys.argv[1:]), settings=vars(args),
                  results=[])
    failed = False
    for model in args.model:
        with open(f'{model}/config.json') as f:
            cfg = json.load(f)
        vocab = min(cfg['vocab_size'], cfg.get('mask_token_id', cfg['vocab_size']))
        small = gec.random_prompts(vocab, args.num_small, args.seed)
        stock, _ = run(model, arm_fields('stock'), small, args)
        focus, counts = run(model, FOCUS, small, args)
        within = dict(model=model, case='within', **gec.compare(stock, focus),
                      decode_steps=counts.get('decode_steps'), stock_steps=counts.get('stock_steps'))
        within['ok'] = (within['identical'] == len(small) and counts.get('decode_steps', 0) > 0
                        and counts.get('stock_steps') == counts.get('decode_steps'))
        growing_prompts = gec.random_prompts(vocab, 1 + args.num_join, args.seed + 1)
        outputs, counts = run(model, FOCUS, growing_prompts, args, growing=True)
        growing = dict(model=model, case='growing', sequences=len(outputs),
                       finished=sum(len(o) == args.max_new_tokens for o in outputs),
                       decode_steps=counts.get('decode_steps'), stock_steps=counts.get('stock_steps'))
        growing['ok'] = (growing['finished'] == len(outputs)
                         and 0 < counts.get('stock_steps', 0) < counts.get('decode_steps', 0))
        for row in (within, growing):
            failed |= not row['ok']
            print(json.dumps(row), flush=True)
            report['results'].append(row)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
