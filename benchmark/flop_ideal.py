"""Measured speed-up ÷ FLOP-ideal speed-up of FOCUS records against the stock record of the same run.

    python benchmark/flop_ideal.py RESULTS_DIR_OR_JSON... [--layers 36] [--head-layers 3.2]

The ideal is the ratio of row-layers per generated token (issue 14), from each record's dllm_metrics:
stock = processed rows × (layers + head); FOCUS = layer-0 rows × 2 + deep rows × (layers − 2) + kept
masked rows × head (the LM head runs on those only). ``head`` is the LM head's cost in layers
(vocab·hidden over one layer's weights: 3.2 for SDAR-8B, whose 36 layers are the defaults). Attention
over the context is left out, so this is a weights-FLOP ideal. Graph padding counts against FOCUS, as
it should. Prints one line per FOCUS record: the ideal, the end-to-end ratio (output tok/s) and the
decode-phase ratio (TPOT), each ÷ the ideal. The stock reference is plot_results' (same source
directory, model, batch size and settings).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_results import arm_base, load_results, stock_reference  # noqa: E402


def row_layers_per_token(r, layers: int, head: float) -> float:
    dm = r['dllm_metrics']
    gen = dm['generated_tokens']
    if arm_base(r['arm']) == 'stock':
        return dm['processed_tokens'] / gen * (layers + head)
    return (dm['layer0_tokens'] * 2 + dm['deep_tokens'] * (layers - 2) + dm['kept_candidates'] * head) / gen


def ideal_rows(results, layers: int = 36, head: float = 3.2) -> list[dict]:
    """One dict per FOCUS record that has a same-run stock reference."""
    rows = []
    for r in results:
        if not arm_base(r['arm']).startswith('focus'):
            continue
        s = stock_reference(r, results)
        if s is None:
            continue
        ideal = row_layers_per_token(s, layers, head) / row_layers_per_token(r, layers, head)
        speedup = r['metrics']['output_tok_per_s'] / s['metrics']['output_tok_per_s']
        decode = s['metrics']['tpot_ms']['mean'] / r['metrics']['tpot_ms']['mean']
        rows.append({'arm': r['arm'], 'model': os.path.basename(str(r['model']).rstrip('/')),
                     'concurrency': r['concurrency'], 'source': r['_source'], 'ideal': ideal,
                     'speedup': speedup, 'measured_over_ideal': speedup / ideal,
                     'decode_speedup': decode, 'decode_over_ideal': decode / ideal})
    return sorted(rows, key=lambda x: (x['source'], x['arm'], x['concurrency']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+', help='JSON files or directories (searched recursively)')
    p.add_argument('--layers', type=int, default=36, help='decoder layers of the model (SDAR-8B: 36)')
    p.add_argument('--head-layers', type=float, default=3.2, help='LM head cost in layers (SDAR-8B: 3.2)')
    args = p.parse_args(argv)
    if args.layers < 3:
        raise SystemExit('flop_ideal: error: --layers must be at least 3 (FOCUS evicts after layer 1)')
    rows = ideal_rows(load_results(args.paths), args.layers, args.head_layers)
    if not rows:
        raise SystemExit('flop_ideal: error: no FOCUS record with a same-run stock record')
    print('| source | arm | bs | ideal | speed-up | ÷ ideal | decode speed-up | ÷ ideal |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for x in rows:
        print(f"| {x['source']} | {x['arm']} ({x['model']}) | {x['concurrency']} | {x['ideal']:.2f}× | "
              f"{x['speedup']:.2f}× | {x['measured_over_ideal']:.2f} | {x['decode_speedup']:.2f}× | "
              f"{x['decode_over_ideal']:.2f} |")


if __name__ == '__main__':
    main()
