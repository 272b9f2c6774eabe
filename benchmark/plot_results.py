"""Plot and tabulate profile_throughput JSON results.

    python benchmark/plot_results.py RESULTS_DIR_OR_JSON... --out-dir DIR \
        [--missing 'focus-leftmost=FOCUS not implemented yet']

Writes DIR/throughput.png (output tok/s vs batch size per arm, and processed/generated tokens per
arm) and DIR/results.md (the same numbers as tables). Arms recorded as missing, or named with
--missing, are shown as missing with their reason; nothing is interpolated.
"""
import argparse
import glob
import json
import os
from collections import defaultdict

SCHEMA = 'lmdeploy-focus/profile_throughput/1'


def load_results(paths) -> list:
    files = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, '**', '*.json'), recursive=True)) if os.path.isdir(p) else [p]
    results = []
    for f in files:
        with open(f) as fh:
            r = json.load(fh)
        if isinstance(r, dict) and r.get('schema') == SCHEMA:
            results.append(r)
    if not results:
        raise SystemExit(f'plot_results: error: no profile_throughput JSON files in {" ".join(paths)}')
    return results


def series_label(r) -> str:
    where = os.path.basename(str(r['model']).rstrip('/'))
    if r.get('dataset') != 'random':
        where += ', ' + os.path.basename(str(r['dataset']))
    return f"{r['arm']} ({where})"


def group(results) -> dict:
    """label -> {concurrency: record}; a later record of the same point replaces an earlier one."""
    out = defaultdict(dict)
    for r in sorted(results, key=lambda r: r['date']):
        out[series_label(r)][r['concurrency']] = r
    return dict(out)


def _reason(points) -> str | None:
    missing = [r for r in points.values() if r['status'] != 'ok']
    return missing[0]['reason'] if missing else None


def _dllm(r, key):
    dm = r.get('dllm_metrics') or {}
    return dm.get(key) if dm.get('status') != 'missing' else None


def markdown(groups, extra_missing) -> str:
    levels = sorted({c for pts in groups.values() for c in pts})
    head = '| arm (model) | ' + ' | '.join(f'bs {c}' for c in levels) + ' |'
    lines = ['### Output throughput (tok/s)', '', head, '|' + ' --- |' * (len(levels) + 1)]
    notes = []
    for label, pts in groups.items():
        cells = []
        for c in levels:
            r = pts.get(c)
            cells.append('—' if r is None else f"{r['metrics']['output_tok_per_s']:,.1f}" if r['status'] == 'ok'
                         else 'missing')
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
        if _reason(pts):
            notes.append(f'* {label}: missing: {_reason(pts)}')
    for arm, reason in extra_missing.items():
        lines.append(f'| {arm} | ' + ' | '.join('missing' for _ in levels) + ' |')
        notes.append(f'* {arm}: missing: {reason}')
    lines += [''] + notes
    lines += ['', '### Per run', '',
              '| arm (model) | bs | req/s | in tok/s | out tok/s | TTFT mean / p99 (ms) | TPOT mean (ms) | '
              'ITL mean (ms) | E2E mean / p99 (s) | processed / generated | generated / step |',
              '|' + ' --- |' * 11]
    for label, pts in groups.items():
        for c, r in sorted(pts.items()):
            if r['status'] != 'ok':
                continue
            m = r['metrics']
            ppg, gps = _dllm(r, 'processed_per_generated'), _dllm(r, 'generated_per_step')
            dllm_missing = 'missing' if (r.get('dllm_metrics') or {}).get('status') == 'missing' else 'n/a'
            lines.append(f"| {label} | {c} | {m['request_per_s']:.2f} | {m['input_tok_per_s']:,.1f} | "
                         f"{m['output_tok_per_s']:,.1f} | {m['ttft_ms']['mean']:,.0f} / {m['ttft_ms']['p99']:,.0f} | "
                         f"{m['tpot_ms']['mean']:.1f} | {m['itl_ms']['mean']:.1f} | "
                         f"{m['e2e_s']['mean']:.2f} / {m['e2e_s']['p99']:.2f} | "
                         f"{ppg if ppg is not None else dllm_missing} | {gps if gps is not None else dllm_missing} |")
    return '\n'.join(lines) + '\n'


def plot(groups, extra_missing, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={'width_ratios': [2, 1]})
    missing_lines = []
    for label, pts in groups.items():
        ok = sorted((c, r['metrics']['output_tok_per_s']) for c, r in pts.items() if r['status'] == 'ok')
        if ok:
            ax.plot([c for c, _ in ok], [v for _, v in ok], marker='o', label=label)
        if _reason(pts):
            missing_lines.append(f'{label}: missing')
    missing_lines += [f'{arm}: missing' for arm in extra_missing]
    ax.set_xscale('log', base=2)
    levels = sorted({c for pts in groups.values() for c in pts})
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel('batch size (concurrency)')
    ax.set_ylabel('output tok/s')
    ax.set_title('Output throughput')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper left')
    if missing_lines:
        ax.text(0.99, 0.02, '\n'.join(missing_lines), transform=ax.transAxes, ha='right', va='bottom', fontsize=7,
                color='gray')
    # processed / generated: only where measured
    have = [(label, c, _dllm(r, 'processed_per_generated')) for label, pts in groups.items() for c, r in pts.items()
            if r['status'] == 'ok' and _dllm(r, 'processed_per_generated') is not None]
    ax2.set_title('processed / generated tokens')
    if have:
        for label in dict.fromkeys(h[0] for h in have):
            xs = sorted((c, v) for lab, c, v in have if lab == label)
            ax2.plot([c for c, _ in xs], [v for _, v in xs], marker='o', label=label)
        ax2.set_xscale('log', base=2)
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, 'missing: DLLM statistics\n(--dllm-track) are not\ncollected yet', ha='center',
                 va='center', transform=ax2.transAxes, color='gray')
        ax2.set_xticks([])
        ax2.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+', help='JSON files or directories (searched recursively)')
    p.add_argument('--out-dir', default='./results')
    p.add_argument('--missing', action='append', default=[], metavar='ARM=REASON',
                   help='an expected arm that has no result, with the reason')
    p.add_argument('--no-png', action='store_true', help='only the markdown table')
    args = p.parse_args(argv)
    extra = dict(m.split('=', 1) for m in args.missing)
    groups = group(load_results(args.paths))
    os.makedirs(args.out_dir, exist_ok=True)
    md = os.path.join(args.out_dir, 'results.md')
    with open(md, 'w') as f:
        f.write(markdown(groups, extra))
    print(f'wrote {md}')
    if not args.no_png:
        png = os.path.join(args.out_dir, 'throughput.png')
        plot(groups, extra, png)
        print(f'wrote {png}')


if __name__ == '__main__':
    main()
