"""Exact vs fast commit, per pair of arms of one eval_quality JSON (run with --save-token-ids):
accuracy, outputs that differ token-wise, and tasks whose score flips either way.
    python compare_commit_modes.py quality_*.json [...]   (markdown on stdout)"""
import json
import sys

PAIRS = [('delayed_exact', 'delayed_fast'), ('focus_a1.5', 'focus_a1.5_fast')]


def fmt(x, nd=2):
    return 'n/a' if x is None else f'{x:.{nd}f}'


def main(paths):
    print('| run | arm (exact → fast) | thr | acc exact % | acc fast % | Δ acc (pts) | outputs differing (exact vs fast) '
          '| right only with exact | right only with fast | proc/gen exact | proc/gen fast | rows saved by fast | '
          'layer-0 rows/gen exact | layer-0 rows/gen fast | =stock exact % | =stock fast % | '
          'first differing output token (min–max) | differing outputs wrong in both modes |')
    print('| --- ' * 18 + '|')
    for path in paths:
        run = json.load(open(path))
        label = run['settings']['unmasking_strategy'] + (
            f" ({run['settings']['denoising_steps']} steps/block)" if run['settings']['unmasking_strategy'] != 'low_confidence_dynamic' else '')
        cells = {(c['arm'], c['threshold']): c for c in run['cells'] if c['status'] == 'ok'}
        for (arm, thr), stock in sorted(cells.items(), key=lambda kv: str(kv[0][1])):
            if arm != 'stock':
                continue
            print(f"| {label} | stock | {thr} | {fmt(stock['summary']['accuracy_pct'], 1)} | | | | | | "
                  f"{fmt(stock['summary']['processed_per_generated'])} | | | "
                  f"{fmt(stock['summary']['layer0_processed_per_generated'])} | | | | | |")
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
                      f"{f'{min(firsts)}–{max(firsts)}' if firsts else 'n/a'} | {both_wrong} / {differ} |")


if __name__ == '__main__':
    main(sys.argv[1:])
