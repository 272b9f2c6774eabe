"""Per-cell scoring and summaries, the printed table, the JSON file and the markdown table.

Accuracy is computed from the outputs alone (decoded without special tokens, scored per task), so
it and the output-token counts are there even when no decode statistics are. ``same_as_stock_pct``
is the share of tasks whose output token ids equal the stock arm's at the same threshold: on
random weights, where accuracy means nothing, it is what shows whether an arm changes decoding.
"""
import datetime
import hashlib
import json
import os
import re

from throughput.report import command_line, environment

from .arms import BASELINE_ARM
from .decode_stats import derive
from .outcome import OK

SCHEMA = 'lmdeploy-focus/eval_quality/1'
# (summary key, column title, format)
COLUMNS = (
    ('accuracy_pct', 'acc %', '.1f'),
    ('n', 'n', 'd'),
    ('same_as_stock_pct', '=stock %', '.1f'),
    ('mean_output_tokens', 'out tok/req', '.1f'),
    ('generated_per_step', 'gen/step', '.2f'),
    ('steps_per_request', 'steps/req', '.1f'),
    ('processed_per_generated', 'proc/gen', '.2f'),
    ('kept_fraction', 'kept', '.3f'),
    ('shadow_recall', 'shadow rec', '.3f'),
    ('random_recall', 'random rec', '.3f'),
)


def task_rows(outcome, tasks, prompts, decode, keep_token_ids: bool = False) -> list[dict]:
    rows = []
    for task, prompt, ids, error in zip(tasks, prompts, outcome.token_ids, outcome.errors):
        text = decode(ids)
        row = dict(line=task.line, id=task.id, score=0.0 if error else task.score(text), output_tokens=len(ids),
                   hit_max_new_tokens=len(ids) >= prompt.max_new_tokens, error=error, output=text)
        if keep_token_ids:
            row['token_ids'] = list(ids)
        rows.append(row)
    return rows


def summarize(outcome, rows: list[dict], baseline=None) -> dict:
    n = len(rows)
    correct = sum(r['score'] for r in rows)
    output_tokens = sum(r['output_tokens'] for r in rows)
    same = None
    if baseline is not None and baseline.status == OK and outcome.arm != baseline.arm:
        same = 100.0 * sum(a == b for a, b in zip(outcome.token_ids, baseline.token_ids)) / max(n, 1)
    return dict(n=n,
                correct=correct,
                accuracy_pct=100.0 * correct / n if n else None,
                errors=sum(r['error'] is not None for r in rows),
                output_tokens=output_tokens,
                mean_output_tokens=output_tokens / n if n else None,
                hit_max_new_tokens=sum(r['hit_max_new_tokens'] for r in rows),
                same_as_stock_pct=same,
                seconds=outcome.seconds,
                **derive(outcome.stats, n))


def cell_record(outcome, tasks, prompts, decode, baseline=None, keep_token_ids: bool = False) -> dict:
    """One (arm, threshold) cell: status, settings, summary, raw counters and per-task rows."""
    record = dict(arm=outcome.arm, threshold=outcome.threshold, status=outcome.status, reason=outcome.reason,
                  config=outcome.config, summary=None, decode_stats=outcome.stats, decode_stats_note=outcome.stats_note,
                  tasks=[])
    if outcome.status == OK:
        record['tasks'] = task_rows(outcome, tasks, prompts, decode, keep_token_ids)
        record['summary'] = summarize(outcome, record['tasks'], baseline)
    return record


def baselines(outcomes: list) -> dict:
    """threshold -> the stock arm's outcome at that threshold."""
    return {o.threshold: o for o in outcomes if o.arm == BASELINE_ARM}


def file_sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_record(*, backend: str, model: str, task_file: str, num_tasks: int, settings: dict, cells: list,
               env: dict | None = None, command: str | None = None, task_file_sha256: str | None = None) -> dict:
    """``task_file_sha256``: the digest taken when the tasks were read (default: the file now)."""
    return dict(schema=SCHEMA,
                date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                command=command or command_line(),
                backend=backend,
                model=model,
                task_file=task_file,
                task_file_sha256=task_file_sha256 or file_sha256(task_file),
                num_tasks=num_tasks,
                settings=settings,
                environment=env if env is not None else environment(),
                cells=cells)


def _cell(value, fmt: str) -> str:
    if value is None:
        return 'n/a'
    return format(value, fmt)


def _threshold(value) -> str:
    return '-' if value is None else f'{value:g}'


def _note(cell: dict) -> str:
    """Why a cell has no numbers, or what is off in it (decode-stats notes are listed separately)."""
    if cell['status'] != OK:
        return f"{cell['status']}: {cell['reason']}"
    errors = cell['summary']['errors']
    return f'{errors} request errors' if errors else ''


def stats_notes(run: dict) -> list[str]:
    """Each distinct decode-statistics note once, with the cells it applies to."""
    ok = [c for c in run['cells'] if c['status'] == OK]
    cells_of = {}
    for cell in ok:
        if cell['decode_stats_note']:
            cells_of.setdefault(cell['decode_stats_note'], []).append(f"{cell['arm']}@{_threshold(cell['threshold'])}")
    return [f"decode stats ({'all cells' if len(cells) == len(ok) else ', '.join(cells)}): {note}"
            for note, cells in cells_of.items()]


def table_rows(run: dict) -> list[list[str]]:
    rows = []
    for cell in run['cells']:
        summary = cell['summary'] or {}
        values = [_cell(summary.get(key), fmt) for key, _, fmt in COLUMNS] if cell['status'] == OK else \
            ['-'] * len(COLUMNS)
        rows.append([cell['arm'], _threshold(cell['threshold']), cell['status'], *values])
    return rows


def format_table(run: dict) -> str:
    """Fixed-width table for the terminal, one row per (arm, threshold); reasons below it."""
    header = ['arm', 'thr', 'status', *[title for _, title, _ in COLUMNS]]
    rows = table_rows(run)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    title = (f" quality | {run['backend']} | {os.path.basename(str(run['model']).rstrip('/'))} | "
             f"{os.path.basename(run['task_file'])} ({run['num_tasks']} tasks) ")
    line = '  '.join(h.rjust(w) if i > 2 else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))
    out = [title.center(len(line), '='), line, '-' * len(line)]
    for row in rows:
        out.append('  '.join(v.rjust(w) if i > 2 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    notes = [(c, _note(c)) for c in run['cells']]
    out += [f"{c['arm']} @ {_threshold(c['threshold'])}: {note}" for c, note in notes if note]
    out += stats_notes(run)
    out.append('=' * len(line))
    return '\n'.join(out)


def markdown_table(run: dict) -> str:
    """A markdown table of the cells (for BENCHMARKS.md), with a note column for missing arms."""
    header = ['arm', 'threshold', 'status', *[title for _, title, _ in COLUMNS], 'note']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    for cell, row in zip(run['cells'], table_rows(run)):
        note = _note(cell).replace('|', '\\|')
        lines.append('| ' + ' | '.join(row + [note]) + ' |')
    notes = stats_notes(run)
    return '\n'.join(lines + ([''] + [f'- {n}' for n in notes] if notes else [])) + '\n'


def result_stem(backend: str, model: str, task_file: str) -> str:

    def clean(text):
        return re.sub(r'[^\w.-]', '_', text)

    model = clean(os.path.basename(str(model).rstrip('/')))
    tasks = clean(os.path.splitext(os.path.basename(task_file))[0])
    return f"quality_{backend}_{model}_{tasks}"


def output_names(backend: str, model: str, task_file: str) -> tuple[str, str]:
    """The result files' names, known before the run (so that a blocked or earlier file is found then)."""
    stem = result_stem(backend, model, task_file)
    return stem + '.json', stem + '.md'


def write_outputs(run: dict, out_dir: str) -> tuple[str, str]:
    """``<stem>.json`` (everything) and ``<stem>.md`` (the table) under ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = (os.path.join(out_dir, name) for name in output_names(run['backend'], run['model'],
                                                                                  run['task_file']))
    with open(json_path, 'w', encoding='utf-8') as f:  # UTF-8 whatever the locale: outputs are any text
        json.dump(run, f, indent=2, ensure_ascii=False)
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write(f"Quality, {run['backend']} backend, `{os.path.basename(str(run['model']).rstrip('/'))}`, "
                f"`{os.path.basename(run['task_file'])}` ({run['num_tasks']} tasks), {run['date'][:10]}\n\n")
        f.write(markdown_table(run))
    return json_path, md_path
