"""The calibration table (one row per α: both policies side by side), its markdown and JSON."""
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

from .grid import BASELINE, EVICT, SHADOW, Cell

# each policy keeps its own number of tokens, so each recall has its own random baseline (a random subset of that size)
COLUMNS = ('α', 'recall importance', 'recall leftmost', 'recall random (same size) imp / left', 'kept fraction imp / left',
           'tokens/step imp / left', 'accuracy imp / left', 'deep rows/token imp / left')


def _f(value, digits=3) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}'


def table_rows(results, alphas, unfinished=None) -> list[list[str]]:
    """``unfinished``: cell -> status ('failed', 'not run'), shown where the run's numbers would be."""
    by_cell, unfinished = {r.cell: r for r in results}, unfinished or {}

    def show(cell, name, digits=3):
        result = by_cell.get(cell)
        return unfinished.get(cell, 'n/a') if result is None else _f(getattr(result, name), digits)

    rows = []
    base = Cell(BASELINE)
    if base in by_cell or base in unfinished:
        rows.append(['no eviction', '—', '—', '—', '1 (all)', show(base, 'tokens_per_step', 2), show(base, 'accuracy'),
                     show(base, 'rows_per_token', 2)])
    for alpha in alphas:
        si, sl, ei, el = (Cell(mode, policy, float(alpha)) for mode, policy in
                          ((SHADOW, 'importance'), (SHADOW, 'leftmost'), (EVICT, 'importance'), (EVICT, 'leftmost')))

        def pair(first, second, name, digits=3):
            return f'{show(first, name, digits)} / {show(second, name, digits)}'

        rows.append([f'{alpha:g}', show(si, 'recall'), show(sl, 'recall'), pair(si, sl, 'random_recall'),
                     pair(ei, el, 'kept_fraction'), pair(ei, el, 'tokens_per_step', 2), pair(ei, el, 'accuracy'),
                     pair(ei, el, 'rows_per_token', 2)])
    return rows


def unfinished_lines(unfinished: dict) -> str:
    """The runs that did not finish and why, one line each ('' when all did)."""
    return ''.join(f'- {cell.label}: {status} ({reason})\n' for cell, (status, reason) in unfinished.items()) + \
        ('\n' if unfinished else '')


def cell_records(cells, results, unfinished: dict) -> list[dict]:
    """Every planned run in plan order: the measured ones with their numbers, the others with status and reason."""
    by_cell = {r.cell: r for r in results}
    records = []
    for cell in cells:
        record = dict(mode=cell.mode, policy=cell.policy, alpha=cell.alpha)
        r = by_cell.get(cell)
        if r is None:
            status, reason = unfinished[cell]
            records.append(dict(record, status=status, reason=reason))
            continue
        records.append(dict(record, status='ok', counts=r.counts, accuracy=r.accuracy, recall=r.recall,
                            random_recall=r.random_recall, kept_fraction=r.kept_fraction,
                            tokens_per_step=r.tokens_per_step, rows_per_token=r.rows_per_token, seconds=r.seconds))
    return records


def markdown_table(rows) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '| ' + ' | '.join('---' for _ in COLUMNS) + ' |']
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def recommendation_line(rec, block_length: int | None = None, threshold: float | None = None) -> str:
    """The flags to serve with, with the block length and threshold it was measured at (another threshold
    unmasks differently, so the same alpha keeps a different share of what gets decoded)."""
    if rec.withheld:
        return f'recommendation: withheld ({rec.reason})'
    if rec.enable:
        measured = ''.join(f' {flag} {value:g}' for flag, value in (('--dllm-block-length', block_length),
                                                                      ('--dllm-confidence-threshold', threshold))
                           if value is not None)
        return (f'recommendation: --focus --dllm-focus-policy {rec.policy} --dllm-focus-alpha {rec.alpha:g}{measured} '
                f'({rec.reason})')
    return f'recommendation: do not enable FOCUS on this model ({rec.reason})'


def _commit() -> str | None:
    """The git commit of the checkout the command runs from (or of this source tree when it is one); an
    installed package has none of its own."""
    for where in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        try:
            out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=where, capture_output=True, text=True,
                                 timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def machine(device: str = 'auto') -> str:
    """The card the run used (``device``: the reference backend's --device; 'cpu' runs on the CPU even with CUDA)."""
    import torch
    if device != 'cpu' and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f'CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)'


OUTPUT_NAMES = ('calibration.json', 'calibration.md')


def out_dir_problem(path: str, names=(), flag: str = '--out-dir') -> str | None:
    """Why ``path`` cannot take a tool's results (None: it can), checked before a long run whose results are written
    at its end: it cannot be created, is not writable, or one of ``names`` in it is not a writable file."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f'{flag} {path!r} cannot be created: {e.strerror or e}'
    if not os.access(path, os.W_OK | os.X_OK):
        return f'{flag} {path!r} is not writable'
    for name in names:  # a directory or a read-only file there failed at the end
        target = os.path.join(path, name)
        if os.path.lexists(target) and not (os.path.isfile(target) and os.access(target, os.W_OK)):
            return f'{flag} {path!r}: {name} exists and is not a writable file'
    return None


def earlier_results_problem(path: str, names, flag: str = '--out-dir') -> str | None:
    """Result files of an earlier run in ``path``, which this run would replace (another model's, other arms')."""
    found = [name for name in names if os.path.lexists(os.path.join(path, name))]
    if not found:
        return None
    return (f'{flag} {path!r} already holds {" and ".join(found)} of an earlier run; give --overwrite to replace '
            f'{"it" if len(found) == 1 else "them"}, or another {flag}')


def write(out_dir: str, record: dict, markdown: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = (os.path.join(out_dir, name) for name in OUTPUT_NAMES)
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write('\n')
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write(markdown)
    return json_path, md_path


def header(args, backend_name: str, default_tasks: str = 'default_tasks.jsonl') -> dict:
    return dict(date=datetime.date.today().isoformat(),
                command=shlex.join(['python', '-m', 'lmdeploy_focus.calibrate', *sys.argv[1:]]),
                machine=machine(getattr(args, 'device', 'auto')), backend=backend_name,
                device=getattr(args, 'device', None), dtype=getattr(args, 'dtype', None), commit=_commit(), model=args.model,
                tasks=args.tasks or f'{default_tasks} (shipped with the package)')
