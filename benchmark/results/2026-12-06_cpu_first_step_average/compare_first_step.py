"""Old (block starts from a decoded average of 1) vs new (from the unmasker's L // denoising_steps) FOCUS
arms of eval_quality JSONs: accuracy, agreement with stock, steps, rows; per-task scores to per_task.json.

    python compare_first_step.py --per-task per_task.json SETTING OLD.json[,OLD2.json] NEW.json[,NEW2.json] ...

Each SETTING takes one old and one new list of JSONs (comma-separated, pooled in that order; the stock arm
must be in the old ones: stock does not depend on the change). Projected cost: SDAR-8B row-layers per
generated token as BENCHMARKS.md weighs them (layer-0 rows x 2 + deep rows x 34 + kept masked rows x 3.2).
"""
import argparse
import json
import math


def cells(paths):
    out = {}
    for path in paths.split(','):
        for cell in json.load(open(path))['cells']:
            prev = out.setdefault(cell['arm'], dict(tasks=[], stats={}))
            prev['tasks'] += cell['tasks']
            for key, value in cell['decode_stats'].items():
                prev['stats'][key] = (prev['stats'].get(key) or 0) + (value or 0)
    return out


def sign_test(a: int, b: int) -> float:
    """Two-sided binomial p of a split a / b at 1/2."""
    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def cost(stats):
    gen = stats['generated_tokens']
    return (2 * stats['processed_tokens'] + 34 * stats['deep_tokens'] + 3.2 * stats['kept_candidates']) / gen


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--per-task', required=True)
    p.add_argument('runs', nargs='+', help='SETTING OLD NEW triples')
    args = p.parse_args()
    assert len(args.runs) % 3 == 0
    per_task = {}
    print('| setting | arm | tasks | acc old → new % | right only old / new (p) | = stock old → new % '
          '| steps/req old → new | layer-0 / deep rows per token, old → new | SDAR-8B row-layers / token, old → new |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for i in range(0, len(args.runs), 3):
        setting, old_paths, new_paths = args.runs[i:i + 3]
        old, new = cells(old_paths), cells(new_paths)
        stock = [t['token_ids'] for t in old['stock']['tasks']]
        per_task[setting] = {}
        for arm in new:
            o, n = old[arm], new[arm]
            assert [t['line'] for t in o['tasks']] == [t['line'] for t in n['tasks']]
            so, sn = [t['score'] for t in o['tasks']], [t['score'] for t in n['tasks']]
            only_old = sum(a > b for a, b in zip(so, sn))
            only_new = sum(b > a for a, b in zip(so, sn))
            same = [[t['token_ids'] == s for t, s in zip(c['tasks'], stock)] for c in (o, n)]
            steps = [c['stats']['decode_steps'] / len(c['tasks']) for c in (o, n)]
            rows = [(c['stats']['processed_tokens'] / c['stats']['generated_tokens'],
                     c['stats']['deep_tokens'] / c['stats']['generated_tokens']) for c in (o, n)]
            tasks = len(so)
            print(f'| {setting} | {arm} | {tasks} | {100 * sum(so) / tasks:.1f} → {100 * sum(sn) / tasks:.1f} '
                  f'| {only_old} / {only_new} ({sign_test(only_old, only_new):.2g}) '
                  f'| {100 * sum(same[0]) / tasks:.1f} → {100 * sum(same[1]) / tasks:.1f} '
                  f'| {steps[0]:.1f} → {steps[1]:.1f} '
                  f'| {rows[0][0]:.2f} / {rows[0][1]:.2f} → {rows[1][0]:.2f} / {rows[1][1]:.2f} '
                  f'| {cost(o["stats"]):.1f} → {cost(n["stats"]):.1f} |')
            per_task[setting][arm] = dict(lines=[t['line'] for t in o['tasks']], score_old=so, score_new=sn,
                                          same_as_stock_old=same[0], same_as_stock_new=same[1])
    with open(args.per_task, 'w') as f:
        json.dump(per_task, f)


if __name__ == '__main__':
    main()
