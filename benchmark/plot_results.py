"""Plot and tabulate profile_throughput JSON results, merged from one or more result directories.

    python benchmark/plot_results.py RESULTS_DIR_OR_JSON... --out-dir DIR \
        [--missing 'focus-leftmost=FOCUS not implemented yet'] [--no-png]

Writes DIR/throughput.png (output tok/s vs batch size per arm, and processed/generated tokens per
arm), DIR/results.md (the same numbers as tables) and DIR/plot_inputs.json (the inputs, relative to
DIR, and the plotted series). The PNG carries the plotted series as a text chunk, so a test can check
that a committed PNG, table and JSON agree (``check_agreement``). A series is an arm label with its model (and
dataset unless random); its source is the directory argument it was read from. When several inputs
hold the same point (series, batch size) the newest record wins, and a series whose points come from
more than one source says so. A missing record superseded by a newer measured one of the same series
is dropped. Arms recorded as missing, or named with --missing, are shown as missing with their
reason; nothing is interpolated. Speed-ups are only taken against a stock record of the same source
(run) with the same model, dataset, batch size and settings.
"""
import argparse
import glob
import json
import os
import struct
import zlib
from collections import defaultdict

SCHEMA = 'lmdeploy-focus/profile_throughput/1'
MANIFEST_SCHEMA = 'lmdeploy-focus/plot_results/1'
PNG_SERIES_KEY = 'lmdeploy-focus series'  # PNG tEXt keyword holding the plotted series (JSON)
# settings two records must share for one to be a speed-up reference of the other
COMPARABLE_SETTINGS = ('dllm_block_length', 'dllm_denoising_steps', 'dllm_unmasking_strategy',
                       'dllm_confidence_threshold', 'max_new_tokens', 'input_len', 'output_len', 'ignore_eos',
                       'eager_mode', 'prompts_per_slot', 'num_prompts', 'seed', 'skip_tokenize', 'skip_detokenize',
                       'repeat_block_detect', 'repeat_block_window', 'cache_max_entry_count',
                       'max_prefill_token_num')
# how the engine was sized (profile_throughput sizes it for the run's largest batch) and where it ran: a stock run left
# in the same folder from another run can differ here while its settings agree
COMPARABLE_ENGINE = ('max_batch_size', 'max_prefill_token_num', 'block_size', 'enable_prefix_caching', 'session_len')
COMPARABLE_ENVIRONMENT = ('gpu', 'lmdeploy')
# profile_throughput's ARM_LABELS in table order (a test keeps them together; not imported: plotting needs no
# lmdeploy), and 'focus', the label of results from before the policies had names
ARM_BASES = ('stock', 'delayed-cache', 'focus-importance', 'focus-leftmost', 'shadow-importance', 'shadow-leftmost',
             'focus', 'ar')


def _source_names(paths) -> dict:
    """path argument -> short name (its basename, or the whole path where two basenames collide)."""
    norm = {p: os.path.normpath(p if os.path.isdir(p) else os.path.dirname(p) or '.') for p in paths}
    base = {p: os.path.basename(os.path.abspath(n)) for p, n in norm.items()}
    clash = {b for b in base.values() if len({n for p, n in norm.items() if base[p] == b}) > 1}
    return {p: (norm[p] if base[p] in clash else base[p]) for p in paths}


def load_results(paths, tool: str = 'plot_results') -> list:
    """The profile_throughput records under ``paths``; a missing path, a file that is not JSON or no record at all
    is one line naming ``tool`` (plot_results, flop_ideal) and the path."""
    absent = [path for path in paths if not os.path.exists(path)]
    if absent:
        raise SystemExit(f'{tool}: error: no such file or directory: {", ".join(absent)}')
    names = _source_names(paths)
    results = []
    for p in paths:
        files = sorted(glob.glob(os.path.join(p, '**', '*.json'), recursive=True)) if os.path.isdir(p) else [p]
        for f in files:
            try:
                with open(f) as fh:
                    r = json.load(fh)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise SystemExit(f'{tool}: error: {f}: not a readable JSON file ({e})') from None
            if isinstance(r, dict) and r.get('schema') == SCHEMA:
                r['_source'] = names[p]
                results.append(r)
    if not results:
        raise SystemExit(f'{tool}: error: no profile_throughput JSON files in {" ".join(paths)}')
    return results


def series_label(r) -> str:
    where = os.path.basename(str(r['model']).rstrip('/'))
    if r.get('dataset') != 'random':
        where += ', ' + os.path.basename(str(r['dataset']))
    return f"{r['arm']} ({where})"


def arm_base(arm: str) -> str:
    """'focus-importance-static' -> 'focus-importance' (the arm without its ARM_TAG suffix)."""
    for base in ARM_BASES:
        if arm == base or arm.startswith(base + '-'):
            return base
    return arm


def group(results) -> dict:
    """label -> {concurrency: record}; a later record of the same point replaces an earlier one, and a
    missing point older than a measured point of the same series is dropped."""
    out = defaultdict(dict)
    for r in sorted(results, key=lambda r: r['date']):
        out[series_label(r)][r['concurrency']] = r
    for pts in out.values():
        newest_ok = max((r['date'] for r in pts.values() if r['status'] == 'ok'), default=None)
        for c in [c for c, r in pts.items() if r['status'] != 'ok' and newest_ok and r['date'] < newest_ok]:
            del pts[c]
    return {label: out[label] for label in sorted(out, key=lambda label: _series_order(out[label])) if out[label]}


def _series_order(pts):
    """Table / legend order: by dataset (random first), model, arm tag, then arm in ARM_BASES order."""
    if not pts:
        return (True, '', '', 0, '')
    r = next(iter(pts.values()))
    base = arm_base(r['arm'])
    rank = ARM_BASES.index(base) if base in ARM_BASES else len(ARM_BASES)
    return (r.get('dataset') != 'random', os.path.basename(str(r['model']).rstrip('/')), r['arm'][len(base):], rank,
            r['arm'])


def _reason(points) -> str | None:
    missing = [r for r in points.values() if r['status'] != 'ok']
    return missing[0]['reason'] if missing else None


def _dllm(r, key):
    dm = r.get('dllm_metrics') or {}
    return dm.get(key) if dm.get('status') != 'missing' else None


def _dllm_cell(r, key) -> str:
    v = _dllm(r, key)
    if v is not None:
        return f'{v:.2f}'
    return 'missing' if (r.get('dllm_metrics') or {}).get('status') == 'missing' else 'n/a'


SETTINGS = (('settings', COMPARABLE_SETTINGS), )
SIZE_AND_MACHINE = (('engine_config', COMPARABLE_ENGINE), ('environment', COMPARABLE_ENVIRONMENT))


def _differences(a, b, sections=SETTINGS + SIZE_AND_MACHINE) -> list[str]:
    """What keeps two records from being compared: ``name (a vs b)`` for each setting, engine size or machine fact
    in which they differ."""
    out = []
    for section, keys in sections:
        da, db = a.get(section) or {}, b.get(section) or {}
        out += [f'{k} ({da.get(k)} vs {db.get(k)})' for k in keys if da.get(k) != db.get(k)]
    return out


def _stock_candidates(r, results) -> list:
    """Stock records of the same source (run), model, dataset and batch size as ``r``."""
    if r['status'] != 'ok' or arm_base(r['arm']) in ('stock', 'ar'):
        return []
    return [s for s in results
            if s['status'] == 'ok' and arm_base(s['arm']) == 'stock' and s.get('_source') == r.get('_source')
            and s['model'] == r['model'] and s.get('dataset') == r.get('dataset')
            and s['concurrency'] == r['concurrency']]


def unpaired_reason(r, results) -> str | None:
    """Why ``r`` has no stock reference although its folder holds a stock run of its batch size and settings, sized
    or run otherwise, e.g. left there by another run (None otherwise: a stock run of other settings is another
    experiment)."""
    candidates = [s for s in _stock_candidates(r, results) if not _differences(r, s, SETTINGS)]
    if not candidates or stock_reference(r, results) is not None:
        return None
    newest = max(candidates, key=lambda s: s['date'])
    return f"stock's run differs in {', '.join(_differences(r, newest, SIZE_AND_MACHINE))}"


def stock_reference(r, results):
    """The stock record measured in the same source (run) as ``r`` with the same model, dataset, batch
    size, settings, engine size and machine; None when there is none (or ``r`` is itself stock or AR)."""
    refs = [s for s in _stock_candidates(r, results) if not _differences(s, r)]
    # the same ARM_TAG first, else the longest stock tag this one extends ('-static' for '-static-every-step'; never
    # a sibling such as '-static-second-engine')
    tag = r['arm'][len(arm_base(r['arm'])):]
    extended = [s for s in refs if _extends(tag, s['arm'][len('stock'):])]
    if extended:
        longest = max(len(s['arm']) for s in extended)
        refs = [s for s in extended if len(s['arm']) == longest]
    return max(refs, key=lambda s: s['date']) if refs else None


def _extends(tag: str, base: str) -> bool:
    """Whether ARM_TAG ``tag`` is ``base`` or ``base`` with more words (``-static-fast`` extends ``-static``)."""
    return tag == base or tag.startswith(base + '-') or base == ''


def markdown(groups, extra_missing, results=None) -> str:
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
        by_source = defaultdict(list)
        for c, r in sorted(pts.items()):
            by_source[r.get('_source')].append(str(c))
        if len(by_source) > 1:
            notes.append(f'* {label}: points from several runs: ' +
                         '; '.join(f"bs {', '.join(cs)} from {src}" for src, cs in by_source.items()))
    for arm, reason in extra_missing.items():
        lines.append(f'| {arm} | ' + ' | '.join('missing' for _ in levels) + ' |')
        notes.append(f'* {arm}: missing: {reason}')
    lines += [''] + notes
    speedups, unpaired = [], []
    pool = results or [r for p in groups.values() for r in p.values()]
    for label, pts in groups.items():
        refs = {c: stock_reference(r, pool) for c, r in pts.items()}
        unpaired += [f'* {label}, bs {c}: no ratio: {why}' for c, r in sorted(pts.items())
                     if (why := unpaired_reason(r, pool))]
        if not any(refs.values()):
            continue
        ref_labels = sorted({series_label(s) for s in refs.values() if s})
        cells = [_ratio_cell(pts.get(c), refs.get(c)) for c in levels]
        speedups.append(f"| {label} | {', '.join(ref_labels)} | " + ' | '.join(cells) + ' |')
    if speedups:
        lines += ['', '### Speed-up over stock (output tok/s ratio; same run, model, batch size and settings)', '',
                  '| arm (model) | vs | ' + ' | '.join(f'bs {c}' for c in levels) + ' |',
                  '|' + ' --- |' * (len(levels) + 2)] + speedups
    if unpaired:  # ("settings" in the heading above include the engine's size and the GPU; the heading stays as the
        # committed results.md files have it)
        lines += ['', 'Not compared with stock:', ''] + unpaired
    lines += ['', '### Per run', '',
              '| arm (model) | bs | req/s | in tok/s | out tok/s | TTFT mean / p99 (ms) | TPOT mean (ms) | '
              'ITL mean (ms) | E2E mean / p99 (s) | processed / generated | generated / step | source |',
              '|' + ' --- |' * 12]
    for label, pts in groups.items():
        for c, r in sorted(pts.items()):
            if r['status'] != 'ok':
                continue
            m = r['metrics']
            lines.append(f"| {label} | {c} | {m['request_per_s']:.2f} | {m['input_tok_per_s']:,.1f} | "
                         f"{m['output_tok_per_s']:,.1f} | {_stat(m, 'ttft_ms', 'mean', ',.0f')} / "
                         f"{_stat(m, 'ttft_ms', 'p99', ',.0f')} | {_stat(m, 'tpot_ms', 'mean', '.1f')} | "
                         f"{_stat(m, 'itl_ms', 'mean', '.1f')} | "
                         f"{_stat(m, 'e2e_s', 'mean', '.2f')} / {_stat(m, 'e2e_s', 'p99', '.2f')} | "
                         f"{_dllm_cell(r, 'processed_per_generated')} | {_dllm_cell(r, 'generated_per_step')} | "
                         f"{r.get('_source') or ''} |")
    return '\n'.join(lines) + '\n'


def _stat(metrics: dict, name: str, key: str, spec: str) -> str:
    """A latency statistic, or n/a where the run had none to measure (metrics.summarize gives None: no request
    completed, or every request streamed a single output, so no TPOT / ITL)."""
    value = (metrics.get(name) or {}).get(key)
    return 'n/a' if value is None else format(value, spec)


def _ratio_cell(point, reference) -> str:
    """FOCUS ÷ stock output tok/s, or a dash where either side has no throughput to divide."""
    if not point or not reference or point.get('status') != 'ok' or reference.get('status') != 'ok':
        return '—'
    num, den = point['metrics'].get('output_tok_per_s'), reference['metrics'].get('output_tok_per_s')
    return '—' if not num or not den else f'{num / den:.2f}×'


def plotted_series(groups, extra_missing) -> dict:
    """What the PNG shows, as data: label -> measured points (bs, output tok/s, processed/generated)
    or the missing reason."""
    out = {}
    for label, pts in groups.items():
        ok = [{'bs': c, 'output_tok_per_s': round(r['metrics']['output_tok_per_s'], 3),
               'processed_per_generated': _rounded(_dllm(r, 'processed_per_generated'))}
              for c, r in sorted(pts.items()) if r['status'] == 'ok']
        out[label] = {'points': ok, 'missing': _reason(pts)}
    for arm, reason in extra_missing.items():
        out[arm] = {'points': [], 'missing': reason}
    return out


def _rounded(v):
    return None if v is None else round(v, 4)


def png_text(path) -> dict:
    """The tEXt chunks of a PNG file (keyword -> text)."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:8] != b'\x89PNG\r\n\x1a\n':
        raise ValueError(f'{path}: not a PNG file')
    chunks, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b'tEXt':
            key, _, text = body.partition(b'\0')
            chunks[key.decode('latin-1')] = text.decode('latin-1')
        elif kind == b'zTXt':
            key, _, rest = body.partition(b'\0')
            chunks[key.decode('latin-1')] = zlib.decompress(rest[1:]).decode('latin-1')
        pos += 12 + length
    return chunks


def regenerate(out_dir) -> tuple:
    """(markdown, series) recomputed from the inputs named in ``out_dir/plot_inputs.json``."""
    with open(os.path.join(out_dir, 'plot_inputs.json')) as f:
        manifest = json.load(f)
    if manifest.get('schema') != MANIFEST_SCHEMA:
        raise ValueError(f'{out_dir}/plot_inputs.json: schema {manifest.get("schema")!r}, expected {MANIFEST_SCHEMA}')
    paths = [os.path.normpath(os.path.join(out_dir, p)) for p in manifest['inputs']]
    results = load_results(paths)
    groups = group(results)
    extra = manifest.get('missing') or {}
    return markdown(groups, extra, results), plotted_series(groups, extra)


def check_agreement(out_dir) -> list:
    """Disagreements between ``out_dir``'s results.md, throughput.png, plot_inputs.json and the JSON
    records they were made from (empty when they all agree)."""
    md, series = regenerate(out_dir)
    problems = []
    with open(os.path.join(out_dir, 'results.md')) as f:
        if f.read() != md:
            problems.append('results.md differs from the table regenerated from the JSON records')
    with open(os.path.join(out_dir, 'plot_inputs.json')) as f:
        if json.load(f).get('series') != series:
            problems.append('plot_inputs.json series differ from the JSON records')
    png = os.path.join(out_dir, 'throughput.png')
    if os.path.exists(png):
        text = png_text(png).get(PNG_SERIES_KEY)
        if text is None:
            problems.append('throughput.png carries no plotted series (made by an older plot_results.py)')
        elif json.loads(text) != series:
            problems.append('throughput.png shows other numbers than the JSON records')
    return problems


def _style(label, pts, colours):
    """Colour by arm, line style by model (block size), marker by the arm's tag (static / dynamic) or
    dataset (triangle: a real dataset rather than random tokens)."""
    r = next(iter(pts.values()))
    base = arm_base(r['arm'])
    colour = colours.setdefault(base, f'C{len(colours) % 10}')
    model = os.path.basename(str(r['model']).rstrip('/'))
    linestyle = '--' if model.endswith('-b16') else ':' if model.endswith('-b64') else '-'
    tag = r['arm'][len(base):]
    marker = '^' if r.get('dataset') != 'random' else 's' if 'dynamic' in tag else 'o'
    return dict(color=colour, linestyle=linestyle, marker=marker)


def plot(groups, extra_missing, path):
    """PNG of the groups; the plotted series ride along as a tEXt chunk (``PNG_SERIES_KEY``)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(16, 6.5), gridspec_kw={'width_ratios': [2, 1]})
    missing_lines = []
    colours = {}
    styles = {label: _style(label, pts, colours) for label, pts in groups.items()}
    for label, pts in groups.items():
        ok = sorted((c, r['metrics']['output_tok_per_s']) for c, r in pts.items() if r['status'] == 'ok')
        if ok:
            ax.plot([c for c, _ in ok], [v for _, v in ok], label=label, **styles[label])
        if _reason(pts):
            missing_lines.append(f'{label}: missing')
    missing_lines += [f'{arm}: missing' for arm in extra_missing]
    ax.set_xscale('log', base=2)
    levels = sorted({c for pts in groups.values() for c in pts})
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel('batch size (concurrency)')
    ax.set_ylabel('output tok/s')
    ax.set_title('Output throughput (line style: block size; square marker: dynamic unmasking)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='upper left')
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
            ax2.plot([c for c, _ in xs], [v for _, v in xs], label=label, **styles[label])
        ax2.set_xscale('log', base=2)
        ax2.set_xticks(levels, [str(c) for c in levels])
        ax2.set_xlabel('batch size (concurrency)')
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=6)
    else:
        ax2.text(0.5, 0.5, 'missing: no DLLM statistics\n(--dllm-track) in these results', ha='center',
                 va='center', transform=ax2.transAxes, color='gray')
        ax2.set_xticks([])
        ax2.set_yticks([])
    fig.tight_layout()
    series = json.dumps(plotted_series(groups, extra_missing), sort_keys=True)
    fig.savefig(path, dpi=120, metadata={PNG_SERIES_KEY: series, 'Software': 'benchmark/plot_results.py'})
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('paths', nargs='+', help='JSON files or directories (searched recursively), merged')
    p.add_argument('--out-dir', default='./results', help='where results.md, plot_inputs.json and throughput.png go (default: ./results, under the '
                   'current directory)')
    p.add_argument('--missing', action='append', default=[], metavar='ARM=REASON',
                   help='an expected arm that has no result, with the reason')
    p.add_argument('--no-png', action='store_true', help='only the markdown table')
    args = p.parse_args(argv)
    results = load_results(args.paths)  # a missing path or unreadable file fails before anything is written
    if not args.no_png:  # checked before anything is written, so a failed run leaves no half output
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit('plot_results: error: throughput.png needs matplotlib: pip install matplotlib (in the '
                             'dev extra and requirements/test_cpu.txt), or pass --no-png for the tables only') from None
    bad = [m for m in args.missing if '=' not in m]
    if bad:
        raise SystemExit(f'plot_results: error: --missing takes ARM=REASON, got {bad[0]!r}')
    extra = dict(m.split('=', 1) for m in args.missing)
    groups = group(results)
    os.makedirs(args.out_dir, exist_ok=True)
    md = os.path.join(args.out_dir, 'results.md')
    with open(md, 'w') as f:
        f.write(markdown(groups, extra, results))
    print(f'wrote {md}')
    manifest = {'schema': MANIFEST_SCHEMA,
                'inputs': [os.path.relpath(os.path.abspath(p), os.path.abspath(args.out_dir)) for p in args.paths],
                'missing': extra,
                'series': plotted_series(groups, extra)}
    with open(os.path.join(args.out_dir, 'plot_inputs.json'), 'w') as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write('\n')
    if not args.no_png:
        png = os.path.join(args.out_dir, 'throughput.png')
        plot(groups, extra, png)
        print(f'wrote {png}')


if __name__ == '__main__':
    main()
