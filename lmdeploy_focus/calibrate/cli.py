"""The calibration command line (see the package docstring for what it measures and how it decides)."""
import argparse
import math
import os
import sys
import time
import traceback
from importlib import resources

from ..config.options import DEFAULT_AUTO_TARGET_RECALL, FOCUS_POLICIES, MAX_FOCUS_ALPHA
from . import backends, checks, grid, report
from .task_file import TaskFileError, load_tasks

DEFAULT_ALPHAS = (1.0, 1.5, 2.0, 3.0, 4.0)
DEFAULT_MAX_NEW_TOKENS = 128  # a task that sets none, without --max-new-tokens
DEFAULT_TASKS = 'default_tasks.jsonl'  # shipped with the package: a few short general prompts
COLUMN_NOTES = ('Recall: shadow mode (nothing evicted), decoded tokens the kept set held, over the steps with more '
                'candidates than the target; random: the expected recall of a uniformly random subset of the same '
                'size. The other columns are from runs that evict. Deep rows/token: rows through layers >= 2 per '
                'generated token.')


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='python -m lmdeploy_focus.calibrate',
                                description='Measure which FOCUS setting a DLLM tolerates: recall of the decoded tokens '
                                'by the kept set (shadow mode) and the cost and accuracy of evicting, over a grid of α '
                                'for both policies; recommends the cheapest (policy, α) that meets the recall target.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('model', help='model directory (the reference backend needs a local SDAR checkpoint)')
    p.add_argument('--tasks', default=None,
                   help='JSONL task file in the format of benchmark/eval_quality.py ({"prompt", "answer" | "reference", '
                   '["scorer"], ["max_new_tokens"], ["id"], ["meta"]}); default: a small prompt set shipped with the '
                   'package')
    p.add_argument('--num-tasks', type=int, default=None, help='only the first N tasks of the file')
    p.add_argument('--alphas', type=float, nargs='+', default=list(DEFAULT_ALPHAS), help='the α grid (each >= 1)')
    p.add_argument('--policies', nargs='+', default=list(FOCUS_POLICIES), choices=FOCUS_POLICIES,
                   help='selection policies to measure')
    p.add_argument('--target-recall', type=float, default=DEFAULT_AUTO_TARGET_RECALL,  # α auto's target too
                   help='fraction of the decoded tokens the kept set must contain for a setting to be recommended')
    p.add_argument('--threshold', type=float, default=0.9, help='dllm_confidence_threshold (low_confidence_dynamic)')
    p.add_argument('--block-length', type=int, default=None, help='None: N of a -b<N> model path')
    p.add_argument('--max-new-tokens', type=int, default=None,
                   help=f'the most tokens any task generates (given, it caps each task\'s own max_new_tokens, which '
                   f'every shipped task sets; not given: each task\'s own, else {DEFAULT_MAX_NEW_TOKENS})')
    p.add_argument('--batch-size', type=int, default=16, help='prompts decoded together')
    p.add_argument('--backend', default='auto', choices=('auto', 'engine', 'reference'),
                   help="engine: LMDeploy's PyTorch engine (CUDA); reference: the pure-torch reference loop (CPU or "
                   "CUDA; needs the development package, pip install '.[dev]'); auto: engine with CUDA, else reference")
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='reference backend only')
    p.add_argument('--dtype', default='auto', choices=('auto', 'float32', 'float64', 'bfloat16', 'float16'),
                   help="reference backend only; auto: float32 on CPU, the checkpoint's dtype on CUDA")
    p.add_argument('--eager-mode', action='store_true', help='engine backend only: no CUDA graphs')
    p.add_argument('--out-dir', default='calibration', help='where calibration.json and calibration.md go')
    p.add_argument('--overwrite', action='store_true',
                   help="replace the calibration.json / .md of an earlier run in --out-dir (refused without it)")
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    bad = [a for a in args.alphas if not (math.isfinite(a) and 1.0 <= a <= MAX_FOCUS_ALPHA)]
    if bad:  # refused here, not after the baseline has run
        p.error(f'--alphas must each be a number in [1, {MAX_FOCUS_ALPHA:g}], got {bad}')
    if not 0.0 < args.target_recall <= 1.0 or not 0.0 < args.threshold <= 1.0:
        p.error('--target-recall and --threshold must lie in (0, 1]')
    for name in ('num_tasks', 'block_length', 'max_new_tokens', 'batch_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    problem = checks.block_length_problem(args.block_length)
    if problem:
        p.error(problem)
    args.alphas = list(dict.fromkeys(args.alphas))
    args.policies = list(dict.fromkeys(args.policies))
    return args


def _backend_name(args) -> str:
    """The backend that will run, refusing options the other backend alone reads (they would be dropped silently)."""
    name = backends.resolve(args.backend, args.device)
    problem = checks.other_backend_problem(name, args)
    if problem:
        raise SystemExit(f'calibrate: error: {problem}')
    return name


def _writable_out_dir(path: str, overwrite: bool = False) -> None:
    """Checked before any run: a grid takes hours on a real model, and its results are written at the end (over
    an earlier run's only when asked)."""
    problem = report.out_dir_problem(path, report.OUTPUT_NAMES) or \
        (None if overwrite else report.earlier_results_problem(path, report.OUTPUT_NAMES))
    if problem:
        raise SystemExit(f'calibrate: error: {problem}')


def token_budgets(tasks, cap: int | None) -> list[int]:
    """Each task's max_new_tokens (its own, else :data:`DEFAULT_MAX_NEW_TOKENS`), capped by ``--max-new-tokens``."""
    own = [t.max_new_tokens or DEFAULT_MAX_NEW_TOKENS for t in tasks]
    return own if cap is None else [min(n, cap) for n in own]


def _tasks(args):
    if args.tasks is None:
        with resources.as_file(resources.files(__package__) / DEFAULT_TASKS) as path:
            return load_tasks(str(path))[:args.num_tasks]
    return load_tasks(args.tasks)[:args.num_tasks]


def _encode(tokenizer, prompt: str) -> list[int]:
    """The prompt through the tokenizer's chat template when it has one (thinking off), as eval_quality does."""
    if getattr(tokenizer, 'chat_template', None):
        text = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(prompt))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _run_cell(backend, cell, tasks, prompts, max_new, tokenizer) -> grid.CellResult:
    start = time.perf_counter()
    counts, token_ids = backend.run(cell, prompts, max_new)
    outputs = [tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
    accuracy = sum(t.score(o) for t, o in zip(tasks, outputs)) / len(tasks)
    return grid.CellResult(cell, counts, accuracy, round(time.perf_counter() - start, 2), outputs)


def _run_grid(backend, cells, tasks, prompts, max_new, tokenizer, quiet: bool):
    """The results of the runs that finished, the others (cell -> (status, reason)) and what ended the grid early
    (None: nothing did). A run that raises (CUDA out of memory, a request the engine aborts) is ``failed`` and the
    grid goes on; Ctrl-C or an exit inside a run ends it, the runs after it ``not run``. Either way the finished
    runs are kept: a grid takes hours."""
    bar = _progress(len(cells), quiet)
    results, unfinished = [], {}
    try:
        for i, cell in enumerate(cells):
            if bar is not None:
                bar.set_postfix_str(cell.label)
            try:
                results.append(_run_cell(backend, cell, tasks, prompts, max_new, tokenizer))
            except (KeyboardInterrupt, SystemExit) as e:
                unfinished[cell] = (grid.FAILED, f'{grid.failure_reason(e)}; the grid stopped here')
                unfinished.update((rest, (grid.NOT_RUN, f'the grid stopped at {cell.label}')) for rest in cells[i + 1:])
                return results, unfinished, e
            except Exception as e:  # noqa: BLE001  one broken run must not lose the others
                unfinished[cell] = (grid.FAILED, grid.failure_reason(e))
                # the whole traceback: the table keeps one line, and a bug in a backend needs the rest
                traceback.print_exception(e, file=sys.stderr)
                print(f'calibrate: {cell.label} failed: {grid.failure_reason(e)}', file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results, unfinished, None


def _progress(total: int, quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc='calibrate', unit='run', file=sys.stderr)


def run(args) -> dict:
    from transformers import AutoTokenizer

    from ..config.model_facts import block_length_from_path
    # a hub id needs network access, which calibration does not assume
    if not os.path.isfile(os.path.join(args.model, 'config.json')):
        raise SystemExit(f'calibrate: error: {args.model!r} is not a model folder (the one holding config.json)')
    name = _backend_name(args)
    _writable_out_dir(args.out_dir, args.overwrite)
    tasks = _tasks(args)
    block_length = args.block_length or block_length_from_path(args.model)
    if block_length is None:
        raise SystemExit('calibrate: error: give --block-length (the model path does not end in -b<N>)')
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=True)
    except (OSError, ValueError) as e:
        raise SystemExit(f'calibrate: error: cannot load a tokenizer from {args.model}: {_first_line(e)}') from None
    prompts = [_encode(tokenizer, t.prompt) for t in tasks]
    max_new = token_budgets(tasks, args.max_new_tokens)
    checks.check_prompts(args.model, args.tasks or DEFAULT_TASKS, tasks, prompts, max_new)
    settings = backends.BackendSettings(model_path=args.model, block_length=block_length,
                                        confidence_threshold=args.threshold, batch_size=args.batch_size,
                                        stop_token_ids=checks.stop_token_ids(args.model, tokenizer), device=args.device,
                                        dtype=args.dtype, eager_mode=args.eager_mode)
    try:
        backend = backends.load(name)(settings)
    except (ValueError, OSError) as e:  # a checkpoint this backend cannot load (another family, no weights)
        from ..config.model_facts import DLLM_MODEL_TYPES, local_model_type
        if local_model_type(args.model) not in DLLM_MODEL_TYPES:
            hint = f'; calibration is for diffusion models (model_type {", ".join(DLLM_MODEL_TYPES)})'
        elif name == 'reference':
            hint = '; the engine backend (--backend engine, a CUDA GPU) runs every diffusion model the plugin serves'
        else:
            hint = ''
        raise SystemExit(f'calibrate: error: the {name} backend cannot load {args.model}: {_first_line(e)}{hint}') \
            from None
    cells = grid.plan(args.alphas, args.policies)
    results, unfinished, stopped = _run_grid(backend, cells, tasks, prompts, max_new, tokenizer, args.quiet)
    # a choice among the runs that finished could pick a setting a failed run would have beaten
    recommendation = grid.withheld(len(unfinished), len(cells)) if unfinished else \
        grid.recommend(results, args.target_recall)
    rows = report.table_rows(results, args.alphas, {cell: status for cell, (status, _) in unfinished.items()})
    head = report.header(args, backend.name, DEFAULT_TASKS)
    table = report.markdown_table(rows)
    line = report.recommendation_line(recommendation, block_length, args.threshold)
    verdict = report.unfinished_lines(unfinished) + line
    markdown = (f'# FOCUS calibration: {args.model}\n\n' + '\n'.join(f'- {k}: {v}' for k, v in head.items()) +
                f'\n- tasks run: {len(tasks)}, block length {block_length}, threshold {args.threshold}, target recall '
                f'{args.target_recall}\n\n{table}\n\n{verdict}\n\n{COLUMN_NOTES}\n')
    record = dict(head, block_length=block_length, threshold=args.threshold, target_recall=args.target_recall,
                  alphas=args.alphas, policies=args.policies, num_tasks=len(tasks), columns=list(report.COLUMNS),
                  table=rows, recommendation=dict(enable=recommendation.enable, policy=recommendation.policy,
                                                  alpha=recommendation.alpha, reason=recommendation.reason,
                                                  withheld=recommendation.withheld),
                  cells=report.cell_records(cells, results, unfinished))
    print(table)
    print(verdict)
    json_path, md_path = report.write(args.out_dir, record, markdown)
    print(f'wrote {json_path} and {md_path}')
    if unfinished:
        _exit_unfinished(unfinished, len(cells), stopped, json_path)
    return record


def _exit_unfinished(unfinished: dict, total: int, stopped, json_path: str) -> None:
    """After the report is on disk: one line, and a failing exit status (130 for Ctrl-C, as the shell's)."""
    (cell, (_, reason)), *_ = unfinished.items()
    if isinstance(stopped, KeyboardInterrupt):
        print(f'calibrate: interrupted during {cell.label}; the finished runs are in {json_path}', file=sys.stderr)
        raise SystemExit(130)
    raise SystemExit(f'calibrate: error: {len(unfinished)} of {total} runs did not finish ({cell.label}: {reason}); '
                     f'the finished ones are in {json_path}')


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        return run(args)
    except (TaskFileError, backends.BackendUnavailable, checks.InputError) as e:
        raise SystemExit(f'calibrate: error: {e}') from None
