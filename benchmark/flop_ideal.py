"""Measured speed-up ÷ FLOP-ideal speed-up of FOCUS records against the stock record of the same run.

    python benchmark/flop_ideal.py RESULTS_DIR_OR_JSON... [--layers 36] [--head-layers 3.2] [--qkv-share 0.13]
                                   [--ridge-rows R]

The ideal is the ratio of row-layers per generated token (issue 14), from each record's dllm_metrics:
stock = processed rows × (layers + head); FOCUS = layer-0 rows × (1 + qkv) + deep rows × (layers − 1 − qkv)
+ kept masked rows × head. The front runs layer 0 and layer 1's QKV projection (its K/V write) on every
processed row; layer 1's attention output and MLP and layers 2.. run on the kept rows; the LM head on the
kept masked rows only. ``qkv`` is the QKV projection's share of a layer's weights (SDAR-8B: (4096 + 2·1024)
× 4096 of 193 M = 0.13), ``head`` the LM head's cost in layers (vocab·hidden over one layer's weights: 3.2
for SDAR-8B, whose 36 layers are the defaults). Attention over the context is left out, so this is a
weights-FLOP ideal. (Before 2026-12-06 layer 1 was billed whole to the layer-0 rows, ``--qkv-share 1``: it
understated the ideal by 2–3 %.) Graph padding counts against FOCUS, as
it should. Prints one line per FOCUS record: the ideal, the end-to-end ratio (output tok/s) and the
decode-phase ratio (TPOT), each ÷ the ideal. The stock reference is plot_results' (same source
directory, model, batch size and settings): every record under one path argument counts as one run, so
pass each run's folder, never a parent of several runs (their stocks would mix).

``--ridge-rows R`` (default 0: the issue's pure FLOP ideal) makes it a roofline ideal: a GEMM over M rows
costs max(M, R) rows, since below the GPU's ridge point it is paced by reading its weights, not by its
FLOPs (H100 bf16: ≈ 989 TFLOP/s ÷ 3.35 TB/s ≈ 295 rows). M is a phase's mean rows per engine step: the
record's rows per sequence step (tokens ÷ ``decode_steps``) × the batch size (one wave of requests).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_results import arm_base, load_results, stock_reference  # noqa: E402


QKV_SHARE = 0.13  # SDAR-8B: q, k, v projections (4096 + 2 * 1024) x 4096 of a layer's 193 M weights


def row_layers_per_token(r, layers: int, head: float, ridge_rows: float = 0.0, qkv: float = QKV_SHARE) -> float:
    dm = r['dllm_metrics']
    gen = dm['generated_tokens']
    steps = dm.get('decode_steps') if ridge_rows else None
    if ridge_rows and not steps:
        raise ValueError(f"record {r['arm']} bs {r['concurrency']} has no decode_steps: --ridge-rows needs them")

    def cost(tokens: float) -> float:  # a phase's row-layers, each engine step's GEMM at least ridge_rows
        if not ridge_rows:
            return tokens
        return steps * max(tokens / steps * r['concurrency'], ridge_rows) / r['concurrency']

    if arm_base(r['arm']) == 'stock':
        return cost(dm['processed_tokens']) * (layers + head) / gen
    return (cost(dm['layer0_tokens']) * (1 + qkv) + cost(dm['deep_tokens']) * (layers - 1 - qkv)
            + cost(dm['kept_candidates']) * head) / gen


def prompt_row_layers_per_token(r, layers: int, head: float) -> float:
    """The prefill's row-layers per generated token: every prompt row through every layer, one LM-head row a request
    (both arms prefill alike; attention over the context is left out, as in the decode rows)."""
    m = r['metrics']
    if 'input_tokens' not in m or 'completed' not in m:
        raise ValueError(f"record {r['arm']} bs {r['concurrency']} has no metrics.input_tokens / completed: "
                         'the whole-run ideal needs the prompt rows')
    return (m['input_tokens'] * layers + m['completed'] * head) / r['dllm_metrics']['generated_tokens']


def unusable(r) -> str | None:
    """Why a record cannot enter the ideal (None: it can): a failed level, no counters, no throughput."""
    if r.get('status') != 'ok':
        return f"status {r.get('status')}"
    if not (r.get('dllm_metrics') or {}).get('generated_tokens'):
        return 'no dllm_metrics (measure with --dllm-track)'
    if not (r.get('metrics') or {}).get('output_tok_per_s'):
        return 'no output throughput'
    return None


def ideal_rows(results, layers: int = 36, head: float = 3.2, ridge_rows: float = 0.0,
               qkv: float = QKV_SHARE, skipped: list | None = None) -> list[dict]:
    """One dict per FOCUS record that has a same-run stock reference; ``skipped`` collects the pairs left out."""
    rows = []
    for r in results:
        if not arm_base(r['arm']).startswith('focus'):
            continue
        s = stock_reference(r, results)
        if s is None:
            continue
        why = unusable(r) or unusable(s)
        if why:
            if skipped is not None:
                skipped.append(f"{r['arm']} bs {r['concurrency']} ({r.get('_source')}): {why}")
            continue
        stock_rows = row_layers_per_token(s, layers, head, ridge_rows, qkv)
        focus_rows = row_layers_per_token(r, layers, head, ridge_rows, qkv)
        ideal = stock_rows / focus_rows
        run_ideal = ((stock_rows + prompt_row_layers_per_token(s, layers, head))
                     / (focus_rows + prompt_row_layers_per_token(r, layers, head)))
        speedup = r['metrics']['output_tok_per_s'] / s['metrics']['output_tok_per_s']
        tpots = [(x['metrics'].get('tpot_ms') or {}).get('mean') for x in (s, r)]
        decode = tpots[0] / tpots[1] if all(tpots) else None  # no TPOT: every output a single token
        rows.append({'arm': r['arm'], 'model': os.path.basename(str(r['model']).rstrip('/')),
                     'concurrency': r['concurrency'], 'source': r['_source'], 'ideal': ideal,
                     'run_ideal': run_ideal, 'speedup': speedup, 'measured_over_run_ideal': speedup / run_ideal,
                     'measured_over_ideal': speedup / ideal,
                     'decode_speedup': decode, 'decode_over_ideal': None if decode is None else decode / ideal})
    return sorted(rows, key=lambda x: (x['source'], x['arm'], x['concurrency']))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+', help='JSON files or directories (searched recursively)')
    p.add_argument('--layers', type=int, default=36, help='decoder layers of the model (SDAR-8B: 36)')
    p.add_argument('--head-layers', type=float, default=3.2, help='LM head cost in layers (SDAR-8B: 3.2)')
    p.add_argument('--ridge-rows', type=float, default=0.0,
                   help='roofline: a GEMM over fewer rows per engine step costs this many (H100 bf16: ~295; '
                        'default 0, the pure FLOP ideal)')
    p.add_argument('--qkv-share', type=float, default=QKV_SHARE,
                   help="the QKV projection's share of a layer's weights (SDAR-8B: 0.13); 1 bills layer 1 whole "
                        'to the processed rows (the formula before 2026-12-06)')
    args = p.parse_args(argv)
    if not 0 <= args.qkv_share <= 1:
        raise SystemExit('flop_ideal: error: --qkv-share must be in [0, 1]')
    if args.layers < 3:
        raise SystemExit('flop_ideal: error: --layers must be at least 3 (FOCUS evicts after layer 1)')
    if args.ridge_rows < 0:
        raise SystemExit('flop_ideal: error: --ridge-rows must be 0 or more')
    skipped = []
    try:
        rows = ideal_rows(load_results(args.paths, 'flop_ideal'), args.layers, args.head_layers, args.ridge_rows, args.qkv_share,
                          skipped)
    except ValueError as e:
        raise SystemExit(f'flop_ideal: error: {e}')
    for line in skipped:
        print(f'flop_ideal: warning: left out {line}', file=sys.stderr)
    if not rows:
        raise SystemExit('flop_ideal: error: no FOCUS record with a same-run stock record')
    other = sorted({x['model'] for x in rows if not x['model'].startswith('SDAR-8B')})
    if other and (args.layers, args.head_layers, args.qkv_share) == (36, 3.2, QKV_SHARE):
        print(f'flop_ideal: warning: {", ".join(other)}: the layer count, head cost and QKV share are SDAR-8B\'s '
              f'defaults; pass --layers / --head-layers / --qkv-share for this model', file=sys.stderr)
    print('| source | arm | bs | ideal, decode rows (all rows) | speed-up | ÷ ideal, all rows (decode rows) '
          '| decode speed-up | ÷ ideal, decode rows |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    for x in rows:
        decode = ('n/a | n/a' if x['decode_speedup'] is None else
                  f"{x['decode_speedup']:.2f}× | {x['decode_over_ideal']:.2f}")
        print(f"| {x['source']} | {x['arm']} ({x['model']}) | {x['concurrency']} | {x['ideal']:.2f}× "
              f"({x['run_ideal']:.2f}×) | {x['speedup']:.2f}× | {x['measured_over_run_ideal']:.2f} "
              f"({x['measured_over_ideal']:.2f}) | {decode} |")


if __name__ == '__main__':
    main()
