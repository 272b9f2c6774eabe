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


def _pair(a, b, digits=3) -> str:
    return f'{_f(a, digits)} / {_f(b, digits)}'


def table_rows(results, alphas) -> list[list[str]]:
    by_cell = {r.cell: r for r in results}
    base = by_cell.get(Cell(BASELINE))
    rows = []
    if base is not None:
        rows.append(['no eviction', '—', '—', '—', '1 (all)', _f(base.tokens_per_step, 2), _f(base.accuracy),
                     _f(base.rows_per_token, 2)])
    for alpha in alphas:
        def get(mode, policy):
            return by_cell.get(Cell(mode, policy, float(alpha)))

        si, sl, ei, el = get(SHADOW, 'importance'), get(SHADOW, 'leftmost'), get(EVICT, 'importance'), get(EVICT, 'leftmost')

        def attr(result, name):
            return getattr(result, name) if result is not None else None

        rows.append([f'{alpha:g}', _f(attr(si, 'recall')), _f(attr(sl, 'recall')),
                     _pair(attr(si, 'random_recall'), attr(sl, 'random_recall')),
                     _pair(attr(ei, 'kept_fraction'), attr(el, 'kept_fraction')),
                     _pair(attr(ei, 'tokens_per_step'), attr(el, 'tokens_per_step'), 2),
                     _pair(attr(ei, 'accuracy'), attr(el, 'accuracy')),
                     _pair(attr(ei, 'rows_per_token'), attr(el, 'rows_per_token'), 2)])
    return rows


def markdown_table(rows) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '| ' + ' | '.join('---' for _ in COLUMNS) + ' |']
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def recommendation_line(rec, block_length: int | None = None, threshold: float | None = None) -> str:
    """The flags to serve with, with the block length and threshold it was measured at (another threshold
    unmasks differently, so the same alpha keeps a different share of what gets decoded)."""
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
