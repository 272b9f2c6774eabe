"""Exact vs fast commit, per pair of arms of one eval_quality JSON (run with --save-token-ids):
accuracy, outputs that differ token-wise, tasks whose score flips either way, and the two-sided sign
test of those flips.
    python compare_commit_modes.py quality_*.json [...] [--per-task OUT.json]   (markdown on stdout)
--per-task writes, per run and pair, each task's score in both modes and whether the outputs differ
(what the tables are computed from, without the token ids)."""
import json
import math
import os
import sys

PAIRS = [('delayed_exact', 'delayed_fast'), ('focus_a1.5', 'focus_a1.5_fast')]


def fmt(x, nd=2):
    return 'n/a' if x is None else f'{x:.{nd}f}'


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign test of a vs b flips (p of a split at least this uneven under 50/50)."""
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main(paths, per_task_path=None):
    per_task = []
    print('| run | arm (exact → fast) | thr | acc exact % | acc fast % | Δ acc (pts) | outputs differing (exact vs fast) '
          '| right only with exact | right only with fast | proc/gen exact | proc/gen fast | rows saved by fast | '
          'layer-0 rows/gen exact | layer-0 rows/gen fast | =stock exact % | =stock fast % | '
          'first differing output token (min–max) | differing outputs wrong in both modes | sign test p |')
    print('| --- ' * 19 + '|')
    for path in paths:
        run = json.load(open(path))
        label = run['settings']['unmasking_strategy'] + (
            f" ({run['settings']['denoising_steps']} steps/block)" if run['settings']['unmasking_strategy'] != 'low_confidence_dynamic' else '')
        cells = {(c['arm'], c['threshold']): c for c in run['cells'] if c['status'] == 'ok'}
        for thr in sorted({t for _, t in cells}, key=str):
            stock = cells.get(('stock', thr))  # a run without a stock arm still compares its pairs
            if stock is not None:
                print(f"| {label} | stock | {thr} | {fmt(stock['summary']['accuracy_pct'], 1)} | | | | | | "
                      f"{fmt(stock['summary']['processed_per_generated'])} | | | "
                      f"{fmt(stock['summary']['layer0_processed_per_generated'])} | | | | | | |")
            for ex_name, fa_name in PAIRS:
                ex, fa = cells.get((ex_name, thr)), cells.get((fa_name, thr))
                if ex is None or fa is None:
                    continue
                te, tf = ex['tasks'], fa['tasks']
                assert [t['line'] for t in te] == [t['line'] for t in tf]
                n = len(te)
                differ = sum(a['token_ids'] != b['token_ids'] for a, b in zip(te, tf))
                firsts = [next((k for k in range(min(len(a['token_ids']), len(b['token_ids'])))
                                if a['token_ids'][k] != b['token_ids'][k]), min(len(a['token_ids']), len(b['token_ids'])))
                          for a, b in zip(te, tf) if a['token_ids'] != b['token_ids']]
                both_wrong = sum(a['token_ids'] != b['token_ids'] and a['score'] == 0 and b['score'] == 0
                                 for a, b in zip(te, tf))
                only_ex = sum(a['score'] > b['score'] for a, b in zip(te, tf))
                only_fa = sum(a['score'] < b['score'] for a, b in zip(te, tf))
                se, sf = ex['summary'], fa['summary']
                pe, pf = se['processed_per_generated'], sf['processed_per_generated']
                saved = None if pe is None or pf is None else 100 * (1 - pf / pe)
                print(f"| {label} | {ex_name} → {fa_name} | {thr} | {fmt(se['accuracy_pct'], 1)} | "
                      f"{fmt(sf['accuracy_pct'], 1)} | {sf['accuracy_pct'] - se['accuracy_pct']:+.1f} | "
                      f"{differ} / {n} ({100 * differ / n:.1f} %) | {only_ex} | {only_fa} | {fmt(pe)} | {fmt(pf)} | "
                      f"{fmt(saved, 1)} % | {fmt(se['layer0_processed_per_generated'])} | "
                      f"{fmt(sf['layer0_processed_per_generated'])} | {fmt(se['same_as_stock_pct'], 1)} | {fmt(sf['same_as_stock_pct'], 1)} | "
                      f"{f'{min(firsts)}–{max(firsts)}' if firsts else 'n/a'} | {both_wrong} / {differ} | "
                      f"{sign_test(only_ex, only_fa):.3f} |")
                per_task.append(dict(run=os.path.join(*path.split(os.sep)[-2:]), setting=label, threshold=thr, exact=ex_name, fast=fa_name,
                                     line=[a['line'] for a in te], score_exact=[a['score'] for a in te],
                                     score_fast=[b['score'] for b in tf],
                                     differ=[a['token_ids'] != b['token_ids'] for a, b in zip(te, tf)]))
    if per_task_path:
        with open(per_task_path, 'w') as f:
            json.dump(per_task, f, separators=(',', ':'))


if __name__ == '__main__':
    args = sys.argv[1:]
    out = None
    if '--per-task' in args:
        i = args.index('--per-task')
        out = args[i + 1]
        args = args[:i] + args[i + 2:]
    main(args, out)
