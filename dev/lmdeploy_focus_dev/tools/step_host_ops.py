"""Torch ops of one FOCUS decode step outside its CUDA graphs, by source line (CPU, the tiny harness model).

    python -m lmdeploy_focus_dev.tools.step_host_ops [--batch-size 4] [--alpha 1.5] [--unpadded] [--top 40]
                                                     [--graph-kernels] [--sync-free-rows N]

On the GPU each of these is an eager launch (views excepted) the host pays every step, while the ops under
the step's graph replays are one graph launch each. The numbers cited in BENCHMARKS.md for the host-work
cuts come from here (defaults, with ``--sync-free-rows 0`` since sync-free small batches: the tiny model's
4 × 8 rows would otherwise step sync-free). ``--graph-kernels`` lists instead the plugin's own torch ops under the replays
that launch a kernel (views and bare allocations left out; its Triton kernels, one launch each, not listed): the
kernels a small batch pays in launch latency. The step: ``lmdeploy_focus_dev.testing.decode_step_work.decode_step``.
"""
import argparse
import json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--alpha', default='1.5', help="FOCUS alpha, a number or 'auto'")
    p.add_argument('--unpadded', action='store_true', help='no captured batch bucket: the eager step (no graphs)')
    p.add_argument('--top', type=int, default=40)
    p.add_argument('--graph-kernels', action='store_true',
                   help="list the plugin's own kernel-launching ops under the graphs' replays instead")
    p.add_argument('--sync-free-rows', type=int, default=None,
                   help="the most block rows B*L a step runs without reading its row counts (default: the engine's; "
                   "0: the step reads)")
    args = p.parse_args(argv)
    from lmdeploy_focus_dev.testing.decode_step_work import EngineOps, decode_step
    alpha = args.alpha if args.alpha == 'auto' else float(args.alpha)
    step = decode_step(args.batch_size, alpha, padded=not args.unpadded, sync_free_rows=args.sync_free_rows)
    step()  # first use: lazy state, caches
    step.prepare()  # the harness's fresh state: not the step's work
    with EngineOps() as ops:
        step.run()
    print(json.dumps(dict(batch_size=args.batch_size, alpha=args.alpha, padded=not args.unpadded,
                          sync_free=step.sync_free, total=ops.total,
                          outside_graphs=ops.outside_graphs, plugin_graph_kernels=sum(ops.graph_kernels.values())),
                     indent=None))
    for site, count in (ops.graph_kernels if args.graph_kernels else ops.sites).most_common(args.top):
        print(f'{count:4d}  {site}')


if __name__ == '__main__':
    main()
