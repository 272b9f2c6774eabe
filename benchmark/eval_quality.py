"""Quality and decoding statistics of FOCUS arms on a JSONL task file.

    python benchmark/eval_quality.py TASKS.jsonl MODEL [--backend auto|engine|reference] \
        [--arms stock delayed_fast focus_a1.5 ...] [--thresholds 0.7 0.8 0.9] [--block-length 32] \
        [--max-new-tokens 256] [--num-tasks N] [--concurrency 64] [--eager-mode] \
        [--out-dir benchmark/results/quality/DATE]

Each arm runs at each threshold (a cell): greedy decoding of every task, scored from the outputs
(accuracy) and, where available, the engine's DLLM decode statistics (generated tokens per step,
steps per request, processed/generated, kept fraction, shadow recall vs random recall). Backends:
``engine`` (the in-process LMDeploy PyTorch engine, one engine per cell; needs CUDA) and ``reference``
(the pure-torch reference decode loop, CPU or CUDA); ``auto``, the default, takes the engine when
CUDA is available and the reference loop otherwise. Arms the engine refuses as not implemented are
reported missing with its message. Writes a table to stdout and ``quality_*.json`` / ``.md`` under
--out-dir, also when a cell ends the run (the cells that finished, the rest marked not run); the files of an
earlier run are replaced only with --overwrite.
Task file format: benchmark/quality/task_file.py. Our own implementation; see BENCHMARKS.md.
"""
import argparse
import datetime
import os
import sys

from lmdeploy_focus.calibrate import checks
# --backend auto as the calibration command resolves it: one rule for both tools
from lmdeploy_focus.calibrate.backends import resolve as resolve_backend
from lmdeploy_focus.calibrate.grid import failure_reason

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms', 'throughput', 'quality')
from quality import arms, prompting, report  # noqa: E402
from quality.engine_backend import EngineBackend  # noqa: E402
from quality.outcome import FAILED, CellOutcome  # noqa: E402
from quality.reference_backend import DTYPES, ReferenceBackend, resolve_dtype  # noqa: E402

from quality.task_file import load_tasks  # noqa: E402
from throughput import engine_runner  # noqa: E402
from throughput.errors import BenchmarkInputError  # noqa: E402

BACKENDS = ('auto', 'engine', 'reference')
DEFAULT_OUT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'quality')
NOT_RUN = 'not run'


def default_out_dir() -> str:
    """benchmark/results/quality/<today>: next to the committed results, wherever it is run from."""
    return os.path.join(DEFAULT_OUT_ROOT, datetime.date.today().isoformat())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('task_file', help='JSONL: {"prompt", "answer" | "reference", ["scorer"], ["max_new_tokens"]}')
    p.add_argument('model_path', help='model directory (or hub id for the engine backend)')
    p.add_argument('--backend', default='auto', choices=BACKENDS,
                   help='engine: the LMDeploy PyTorch engine (needs CUDA); reference: the pure-torch decode loop '
                   '(CPU or CUDA; fills the kept / shadow-recall columns from its own counts); '
                   'auto: engine when CUDA is available, else reference (also with --device cpu)')
    p.add_argument('--arms', nargs='+', default=list(arms.ARMS), metavar='ARM',
                   help=f'arms to run, from: {", ".join(arms.ARMS)}')
    p.add_argument('--thresholds', type=float, nargs='+', default=list(arms.DEFAULT_THRESHOLDS),
                   help='dllm_confidence_threshold values; every arm runs at each')
    p.add_argument('--unmasking-strategy', default=arms.DEFAULT_UNMASKING, choices=arms.UNMASKING)
    p.add_argument('--denoising-steps', type=int, default=None,
                   help='static / sequential unmasking: steps per block; None: the block length')
    p.add_argument('--block-length', type=int, default=None, help='None: N of a -b<N> model path')
    p.add_argument('--max-new-tokens', type=int, default=256, help='per task unless the task sets its own')
    p.add_argument('--num-tasks', type=int, default=None, help='the first N tasks of the file; None: all')
    p.add_argument('--seed', type=int, default=0, help='random_seed of the generation config (decoding is greedy)')
    p.add_argument('--concurrency', type=int, default=64,
                   help='requests in flight = max_batch_size (reference backend: prompts per batch)')
    p.add_argument('--chat-template', action=argparse.BooleanOptionalAction, default=None,
                   help="apply the tokenizer's chat template to each prompt; None: when it has one")
    g = p.add_argument_group('engine backend')
    g.add_argument('--eager-mode', action='store_true', help='no CUDA graphs')
    g.add_argument('--cache-max-entry-count', type=float, default=None,
                   help='share of the free GPU memory the KV cache takes; None: '
                   f'{arms.RunSettings.cache_max_entry_count}')
    g.add_argument('--session-len', type=int, default=None)
    g = p.add_argument_group('reference backend')
    g.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    g.add_argument('--dtype', default='auto', choices=('auto', *DTYPES),
                   help="auto: float32 on CPU, the checkpoint's dtype on CUDA")
    g = p.add_argument_group('output')
    g.add_argument('--out-dir', default=None,
                   help=f'where quality_*.json / .md go; None: {os.path.relpath(DEFAULT_OUT_ROOT)}/<today>')
    g.add_argument('--save-token-ids', action='store_true', help='also store every output as token ids')
    g.add_argument('--overwrite', action='store_true',
                   help="replace an earlier run's quality_*.json / .md of the same backend, model and task file "
                   '(refused without it)')
    g.add_argument('--quiet', action='store_true', help='no progress bars')
    return p.parse_args(argv)


def validate(args):
    """The options, ``--backend auto`` resolved first: the other backend's options are refused for the backend
    that will run (the settings recorded them as if they had applied)."""
    try:
        args.arms = arms.check_arms(args.arms)
    except ValueError as e:
        raise BenchmarkInputError(str(e)) from None
    if any(not 0.0 < t <= 1.0 for t in args.thresholds):
        raise BenchmarkInputError(f'--thresholds must lie in (0, 1], got {args.thresholds}')
    for name in ('concurrency', 'max_new_tokens', 'num_tasks', 'block_length', 'denoising_steps', 'session_len'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BenchmarkInputError(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    share = args.cache_max_entry_count
    if share is not None and not 0.0 < share < 1.0:  # the engine asserts it in every cell
        raise BenchmarkInputError(f'--cache-max-entry-count must lie in (0, 1) (a share of the free GPU memory), got '
                                  f'{share:g}')
    args.backend = resolve_backend(args.backend, args.device)
    problem = checks.other_backend_problem(args.backend, args) or checks.block_length_problem(args.block_length)
    if problem:
        raise BenchmarkInputError(problem)
    if args.backend == 'engine' and share is None:
        args.cache_max_entry_count = arms.RunSettings.cache_max_entry_count


def reference_inputs(args) -> None:
    """What the reference backend needs, one line each before anything loads: a local checkpoint folder (a path
    that is none went to the hub client, ~50 s of retries) and, with ``--device cuda``, a GPU (a traceback)."""
    if not os.path.isfile(os.path.join(args.model_path, 'config.json')):
        raise BenchmarkInputError(f'{args.model_path!r} is not a model folder (the one holding config.json); the '
                                  f'reference backend loads a local checkpoint')
    from lmdeploy_focus_dev.devices import NoCudaDevice, resolve_device  # the reference loop's package
    try:
        resolve_device(args.device)
    except NoCudaDevice as e:
        raise BenchmarkInputError(str(e)) from None


def usable_out_dir(path: str, names, overwrite: bool = False) -> None:
    """BenchmarkInputError when ``path`` cannot take the result files ``names``, or holds an earlier run's and
    ``overwrite`` is off (checked before the run, which takes long)."""
    from lmdeploy_focus.calibrate.report import earlier_results_problem, out_dir_problem
    problem = out_dir_problem(path, names) or (None if overwrite else earlier_results_problem(path, names))
    if problem:
        raise BenchmarkInputError(problem)


def resolve_block_length(args) -> int | None:
    if args.block_length:
        return args.block_length
    from lmdeploy_focus.config.model_facts import block_length_from_path
    return block_length_from_path(args.model_path)


def make_backend(args, settings, stop_ids):
    if args.backend == 'engine':
        import torch
        if not torch.cuda.is_available():
            raise BenchmarkInputError('--backend engine needs a CUDA GPU (none is available here): use '
                                      '--backend reference (or auto)')
        import lmdeploy_focus
        lmdeploy_focus.activate()  # a no-op when the .pth installed it; keeps a source checkout usable
        return EngineBackend(args.model_path, settings, stop_ids, args.seed, progress=not args.quiet), {}
    if settings.block_length is None:
        raise BenchmarkInputError('the reference backend needs the block length: give --block-length '
                                  '(or a model path ending in -b<N>)')
    from lmdeploy_focus_dev.devices import resolve_device
    from lmdeploy_focus_dev.reference.checkpoint import load_sdar_checkpoint
    device = resolve_device(args.device)  # checked by reference_inputs before anything loaded
    try:
        checkpoint = load_sdar_checkpoint(args.model_path, resolve_dtype(args.dtype, device), device)
    except (OSError, ValueError) as e:
        raise BenchmarkInputError(f'cannot load {args.model_path} into the reference model: {e}') from None
    env = dict(device=str(device), dtype=str(checkpoint.model.dtype))
    return ReferenceBackend(checkpoint, settings, stop_ids, device), env


def run_cells(backend, cells, prompts) -> tuple[list, tuple | None]:
    """Every cell's outcome, and ``(exception, its cell's outcome)`` when a cell ended the run: one
    that escapes the backend (upstream's environment check exits, Ctrl-C) is recorded as failed and
    the cells after it as not run, so that what finished is still written."""
    outcomes = []
    for i, (threshold, arm) in enumerate(cells, 1):
        print(f'[{i}/{len(cells)}] {arm}, threshold {threshold}', flush=True)
        try:
            outcome = backend.run_cell(arm, threshold, prompts)
        except (SystemExit, KeyboardInterrupt, Exception) as e:  # noqa: BLE001  write what finished
            reason = failure_reason(e)
            failed = CellOutcome(arm, threshold, FAILED, reason=f'{reason}; the run stopped here')
            print(f'  FAILED: {failed.reason}', flush=True)
            rest = [CellOutcome(a, t, NOT_RUN, reason=f'the run stopped at {arm} @ {threshold}') for t, a in cells[i:]]
            return outcomes + [failed] + rest, (e, failed)
        if outcome.status != 'ok':
            print(f'  {outcome.status.upper()}: {outcome.reason}', flush=True)
        outcomes.append(outcome)
    return outcomes, None


def check_prompts(args, tasks, prompts) -> None:
    """calibrate's checks of each task against a local checkpoint (mask token, positions), naming FILE:LINE; a
    hub id (engine backend) has no config.json here to check against."""
    if os.path.isfile(os.path.join(args.model_path, 'config.json')):
        checks.check_prompts(args.model_path, args.task_file, tasks, [p.input_ids for p in prompts],
                             [p.max_new_tokens for p in prompts])


def main(argv=None) -> dict:
    try:
        return run(argv)
    except checks.InputError as e:  # the checks shared with calibrate: this script's one-line input errors
        raise BenchmarkInputError(str(e)) from None


def run(argv=None) -> dict:
    args = parse_args(argv)
    asked = args.backend
    validate(args)
    if asked == 'auto' and args.backend == 'reference':
        why = '--device cpu' if args.device == 'cpu' else 'no CUDA GPU'
        print(f'note: {why}: --backend auto runs the reference decode loop', flush=True)
    args.out_dir = args.out_dir or default_out_dir()
    # before the run: the results are written after its last cell
    usable_out_dir(args.out_dir, report.output_names(args.backend, args.model_path, args.task_file), args.overwrite)
    # the task file is checked before the model is touched, so a bad file fails in a second
    tasks = load_tasks(args.task_file)[:args.num_tasks]
    task_file_sha256 = report.file_sha256(args.task_file)  # of the tasks that run, not of the file at the end
    if args.backend == 'reference':
        reference_inputs(args)
    tokenizer = prompting.load_tokenizer(args.model_path)
    chat_template = prompting.use_chat_template(tokenizer, args.chat_template)
    prompts = prompting.build_prompts(tasks, tokenizer, chat_template, args.max_new_tokens)
    check_prompts(args, tasks, prompts)
    stop_ids = engine_runner.stop_token_ids(args.model_path, tokenizer)
    settings = arms.RunSettings(block_length=resolve_block_length(args),
                                unmasking_strategy=args.unmasking_strategy,
                                denoising_steps=args.denoising_steps,
                                concurrency=args.concurrency,
                                eager_mode=args.eager_mode,
                                cache_max_entry_count=args.cache_max_entry_count,
                                session_len=args.session_len)
    thresholds = list(dict.fromkeys(args.thresholds)) if settings.thresholds_matter else [None]
    if not settings.thresholds_matter:
        print(f'note: {args.unmasking_strategy} has no confidence threshold; --thresholds ignored', flush=True)
    backend, backend_env = make_backend(args, settings, stop_ids)

    cells = [(t, a) for t in thresholds for a in args.arms]
    outcomes, stopped = run_cells(backend, cells, prompts)

    stock = report.baselines(outcomes)

    def decode(ids):
        return prompting.decode_output(tokenizer, ids)

    records = [report.cell_record(o, tasks, prompts, decode, stock.get(o.threshold), args.save_token_ids)
               for o in outcomes]
    run_settings = {k: v for k, v in vars(args).items() if k not in ('task_file', 'model_path')}
    run_settings.update(block_length=settings.block_length, chat_template=chat_template, thresholds=thresholds,
                        denoising_steps=settings.resolved_denoising_steps(), stop_token_ids=stop_ids)
    env = {**report.environment(), **backend_env}
    run = report.run_record(backend=backend.name, model=args.model_path, task_file=args.task_file,
                            num_tasks=len(tasks), settings=run_settings, cells=records, env=env,
                            command=report.command_line(None if argv is None else [__file__, *argv]),
                            task_file_sha256=task_file_sha256)
    print(report.format_table(run), flush=True)
    json_path, md_path = report.write_outputs(run, args.out_dir)
    print(f'wrote {json_path} and {md_path}', flush=True)
    if stopped is not None:  # after the report: what finished is on disk
        error, failed = stopped
        if isinstance(error, KeyboardInterrupt):
            raise SystemExit(130)
        raise SystemExit(f'eval_quality: error: the run stopped at {failed.arm} @ {failed.threshold} '
                         f'({failed.reason}); the cells before it are in {json_path}')
    failed = [f'{o.arm} @ {o.threshold}' for o in outcomes if o.status == FAILED]
    if failed:  # a cell the backend marked failed (e.g. out of memory): the report has it, the exit status too
        raise SystemExit(f'eval_quality: error: {len(failed)} cell(s) failed: {", ".join(failed)}; see {json_path}')
    return run


if __name__ == '__main__':
    try:
        main()
    except BenchmarkInputError as e:
        raise SystemExit(f'eval_quality: error: {e}') from None
