"""Offline throughput of the in-process LMDeploy PyTorch engine (with the lmdeploy-focus plugin).

    python benchmark/profile_throughput.py DATASET MODEL --concurrency 64 --num-prompts 5000 \
        --max-new-tokens 2048 --backend pytorch --eager-mode --skip-tokenize --skip-detokenize \
        --use-uvloop --dllm-block-length 32 --dllm-denoising-steps 32 --dllm-confidence-threshold 0.9 \
        --repeat-block-detect --repeat-block-window 32

DATASET: a ShareGPT-style JSON/JSONL file (or GSM8K / MATH records, --dataset-format), ``random``
(synthetic token ids, --input-len/--output-len) or a HuggingFace dataset id. One async worker per
concurrency slot. Writes a table to stdout, a JSON per run and a CSV row under --output-dir.
Several --concurrency values share one engine sized for the largest (saves engine starts).
Our own implementation; see BENCHMARKS.md.
"""
import argparse
import asyncio
import importlib.util
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('throughput')
from throughput import datasets, engine_runner, prompts, report  # noqa: E402
from throughput.errors import BenchmarkInputError  # noqa: E402

from lmdeploy_focus.cli.flags import add_focus_arguments  # noqa: E402
from lmdeploy_focus.config.compat import UNMASKING_STRATEGIES  # noqa: E402
from lmdeploy_focus.config.options import FOCUS_POLICIES, OPTIONS, FocusOptions  # noqa: E402  (the engine's choices)

OPTION_NAMES = tuple(option.name for option in OPTIONS)

UNMASKING = UNMASKING_STRATEGIES


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('dataset', help='JSON/JSONL file, "random", or a HuggingFace dataset id')
    p.add_argument('model_path', help='model directory (or hub id)')
    p.add_argument('--concurrency', type=int, nargs='+', default=[64], help='requests in flight (batch size)')
    p.add_argument('--num-prompts', type=int, default=5000, help='prompts per concurrency level (capped by the data)')
    p.add_argument('--prompts-per-slot', type=int, default=None,
                   help='use concurrency * K prompts per level instead of --num-prompts')
    p.add_argument('--max-new-tokens', type=int, default=2048)
    p.add_argument('--backend', default='pytorch', choices=('pytorch', 'turbomind'))
    p.add_argument('--eager-mode', action='store_true', help='no CUDA graphs (the fork measures in eager mode)')
    p.add_argument('--skip-tokenize', action='store_true', help='tokenise before timing instead of per request')
    p.add_argument('--skip-detokenize', action='store_true', help='do not detokenise streamed output')
    p.add_argument('--use-uvloop', action='store_true')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--ignore-eos', action='store_true', help='generate exactly the requested number of tokens')
    g = p.add_argument_group('data')
    g.add_argument('--dataset-format', default='auto', choices=datasets.FORMATS)
    g.add_argument('--hf-subset', default=None)
    g.add_argument('--hf-split', default=None)
    g.add_argument('--input-len', type=int, default=256, help='prompt length of the random dataset')
    g.add_argument('--output-len', type=int, default=None, help='output length of the random dataset '
                   '(default: --max-new-tokens)')
    g = p.add_argument_group('engine')
    g.add_argument('--cache-max-entry-count', type=float, default=0.8)
    g.add_argument('--max-prefill-token-num', type=int, default=None, help='default: max concurrency * block length')
    g.add_argument('--session-len', type=int, default=None)
    g = p.add_argument_group('DLLM')
    g.add_argument('--dllm-block-length', type=int, default=None)
    g.add_argument('--dllm-denoising-steps', type=int, default=None)
    g.add_argument('--dllm-unmasking-strategy', default=None, choices=UNMASKING)
    g.add_argument('--dllm-confidence-threshold', type=float, default=None)
    add_focus_arguments(p, leave_unset=True)  # as on lmdeploy serve; a flag left out: the engine's default
    g.add_argument('--dllm-option', action='append', default=[], metavar='NAME=VALUE', type=engine_runner.dllm_option,
                   help='a FOCUS engine option dllm_NAME as NAME=VALUE (a row of the option table, repeatable; the '
                   'same as its flag), e.g. focus_auto_shadow_every=32; the value is read as a Python literal, else '
                   'kept as text')
    g = p.add_argument_group('repetition guard')
    g.add_argument('--repeat-block-detect', action='store_true',
                   help='stop a request whose output ends in 3 identical consecutive windows')
    g.add_argument('--repeat-block-window', type=int, default=32)
    g = p.add_argument_group('output')
    g.add_argument('--arm', default=None, help='label of this configuration in results and plots')
    g.add_argument('--output-dir', default='./results')
    g.add_argument('--warmup-tokens', type=int, default=None, help='output tokens of the untimed warm-up requests')
    g.add_argument('--fast-exit', action='store_true',
                   help='end the process right after the last result is written, without the engine shutdown '
                   '(saves tens of seconds per run in scripted suites; the timed region is unchanged)')
    return p.parse_args(argv)


def check_arm_label(args, facts) -> None:
    """An ``--arm`` named after one of :func:`default_arm`'s labels must be what the flags run: a flag repeated in
    EXTRA_ARGS (``--dllm-enable-focus`` in the baseline driver, another ``--dllm-focus-policy``) ran one arm and saved
    it as another, which plot_results then took as that arm (a stock reference that was FOCUS). Other labels are
    free (the GPU scripts' own names)."""
    runs = default_arm(args, facts)
    named = [base for base in ARM_LABELS if args.arm == base or args.arm.startswith(base + '-')]
    if not named or named[-1] == runs:
        return
    if runs == 'ar':
        raise BenchmarkInputError(f'{args.model_path} is not a diffusion LLM (model_type {facts.model_type!r}): the '
                                  f'{named[-1]!r} arm has nothing to run; benchmark it with --arm ar and no --dllm flags')
    raise BenchmarkInputError(f'--arm {args.arm}: the engine flags run {runs!r} (a flag in EXTRA_ARGS or a '
                              f"--dllm-option overrode the driver's): name the arm after what runs, or drop the flag")


# the labels default_arm gives (an --arm may add a suffix: -static, -fast-commit, ...)
ARM_LABELS = ('ar', 'stock', 'delayed-cache', *(f'{mode}-{policy}' for mode in ('focus', 'shadow')
                                                  for policy in FOCUS_POLICIES))


def run_options(config_kwargs: dict) -> FocusOptions:
    """The FOCUS options the engine runs with (defaults filled in, implications applied: shadow turns FOCUS on, FOCUS
    delayed cache), read from the engine config's kwargs: the arm's label, the statistics read and the saved settings
    follow them, so no flag or --dllm-option changes the mode behind the label."""
    return FocusOptions.from_fields(config_kwargs).resolved()


def saved_settings(args) -> dict:
    """The parsed flags a result records: no positionals, no private parser bookkeeping (the FOCUS flags' set of
    given dests is no JSON)."""
    return {k: v for k, v in vars(args).items() if k not in ('dataset', 'model_path') and not k.startswith('_')}


def default_arm(args, facts) -> str:
    if not facts.is_dllm:
        return 'ar'
    options = run_options(engine_runner.engine_config_kwargs(args, 1, facts))
    if options.focus_shadow:  # FOCUS's selection, nothing evicted: not FOCUS's throughput
        return f'shadow-{options.focus_policy}'
    if options.enable_focus:
        return f'focus-{options.focus_policy}'
    return 'delayed-cache' if options.enable_delayed_cache else 'stock'


def prompts_per_level(args, level: int) -> int:
    return args.prompts_per_slot * level if args.prompts_per_slot else args.num_prompts


def load_tokenizer(model_path: str):
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    except Exception as e:  # noqa: BLE001  any failure here is "this is not a usable model path"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchmarkInputError(f'cannot load a tokenizer from {model_path}: {first}') from None


def build_prompts(args, tokenizer, conversations, needed: int) -> list:
    if conversations is None:
        vocab = getattr(tokenizer, 'vocab_size', None) or 32000
        return prompts.random_prompts(needed, args.input_len, args.output_len or args.max_new_tokens, vocab, args.seed)
    chosen = prompts.sample_prompts(conversations, tokenizer, needed, args.max_new_tokens, args.seed)
    if len(chosen) < needed:
        print(f'note: {args.dataset} gives {len(chosen)} usable prompts; runs use at most that many', flush=True)
    return chosen


def validate(args):
    if args.backend != 'pytorch':
        raise BenchmarkInputError('only --backend pytorch is supported (DLLMs run on the PyTorch engine)')
    if any(c < 1 for c in args.concurrency) or args.num_prompts < 1:
        raise BenchmarkInputError('--concurrency and --num-prompts must be >= 1')
    if args.prompts_per_slot is not None and args.prompts_per_slot < 1:  # 0 fell back, a negative cut prompts off
        raise BenchmarkInputError(f'--prompts-per-slot must be >= 1, got {args.prompts_per_slot}')
    if args.arm is not None and not re.fullmatch(r'[\w.+-]+', args.arm):  # the results' file names carry it
        raise BenchmarkInputError(f'--arm {args.arm!r}: use letters, digits and . _ + - only')
    if args.max_new_tokens < 1:  # a negative budget failed only after the engine had loaded and warmed up
        raise BenchmarkInputError(f'--max-new-tokens must be >= 1, got {args.max_new_tokens}')
    from lmdeploy_focus.calibrate.report import out_dir_problem
    problem = out_dir_problem(args.output_dir, flag='--output-dir')  # it failed after the timed run, losing it
    if problem:
        raise BenchmarkInputError(problem)
    if args.repeat_block_detect and args.repeat_block_window < 8:
        raise BenchmarkInputError('--repeat-block-window must be >= 8')
    for name, value in args.dllm_option:
        if name not in OPTION_NAMES:
            raise BenchmarkInputError(f'--dllm-option {name}: not a FOCUS engine option; known: '
                                      f'{", ".join(OPTION_NAMES)}')
        if getattr(args, f'dllm_{name}', None) is not None:  # its flag given too: which one runs would be hidden
            raise BenchmarkInputError(f'--dllm-option {name}: its flag --dllm-{name.replace("_", "-")} is given too; '
                                      f'give one of them')
        try:
            FocusOptions(**{name: value}).resolved()
        except (ValueError, TypeError) as e:
            raise BenchmarkInputError(f'--dllm-option {name}={value!r}: {e}') from None


def event_loop_name(use_uvloop: bool) -> str:
    if use_uvloop and importlib.util.find_spec('uvloop') is None:
        print('note: uvloop is not installed; using the asyncio event loop', flush=True)
        return 'asyncio'
    return 'uvloop' if use_uvloop else 'asyncio'


def fast_exit(code: int = 0):
    """Leave now: every result file is closed; the engine's shutdown and the interpreter's teardown
    (tens of seconds with an 8B model) are skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_async(coro, loop_name: str):
    if loop_name == 'uvloop':
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv=None):
    args = parse_args(argv)
    validate(args)
    # the dataset is checked before the model is touched, so a bad path fails in a second
    conversations = None
    if args.dataset != datasets.RANDOM_DATASET:
        conversations = datasets.load_conversations(args.dataset, args.dataset_format, args.hf_subset, args.hf_split)
    levels = sorted(set(args.concurrency))
    # a bad option value (e.g. --dllm-focus-alpha 0.5) is one line here, before a hub id is downloaded
    engine_runner.engine_config(engine_runner.engine_config_kwargs(
        args, max(levels), engine_runner.ModelFacts('', False, args.dllm_block_length)))
    if not os.path.exists(args.model_path):
        # a hub id: no download (16 GB for the drivers' default model) on a machine that cannot run it
        engine_runner.check_hub_id(args.model_path)
        engine_runner.require_cuda(f' (checked before fetching {args.model_path})')
    model_dir = engine_runner.local_model_path(args.model_path)
    facts = engine_runner.model_facts(model_dir, args.dllm_block_length)
    if args.arm is not None:
        check_arm_label(args, facts)
    config_kwargs = engine_runner.engine_config_kwargs(args, max(levels), facts)
    tokenizer = load_tokenizer(model_dir)
    all_prompts = build_prompts(args, tokenizer, conversations, max(prompts_per_level(args, c) for c in levels))
    arm = args.arm or default_arm(args, facts)
    settings = saved_settings(args)
    settings['event_loop'] = event_loop_name(args.use_uvloop)
    # every FOCUS option the engine runs with, defaults included (a default may change between plugin versions, e.g.
    # dllm_stock_step_rows: small batches as stock steps)
    options = run_options(config_kwargs)
    settings['focus_options'] = options.to_dict()
    env = report.environment()
    notes = []
    if len(levels) > 1:
        notes.append(f'levels {levels} share one engine sized for concurrency {max(levels)} '
                     f'(max_batch_size {config_kwargs["max_batch_size"]}, '
                     f'max_prefill_token_num {config_kwargs["max_prefill_token_num"]})')
    if args.dataset == datasets.RANDOM_DATASET:
        notes.append('random token-id prompts without chat template')
    dllm_metrics = ({'status': 'missing', 'reason': engine_runner.DLLM_TRACK_MISSING}
                    if facts.is_dllm and options.track else None)

    def emit(level, status, metrics=None, reason=None, run_notes=(), level_dllm=None):
        record = report.result_record(arm=arm, status=status, model=args.model_path, dataset=args.dataset,
                                      concurrency=level, num_prompts=min(prompts_per_level(args, level),
                                                                         len(all_prompts)),
                                      settings=settings, engine_config=config_kwargs, metrics=metrics,
                                      dllm_metrics=(level_dllm or dllm_metrics) if status == 'ok' else None,
                                      reason=reason,
                                      notes='; '.join(list(notes) + list(run_notes)) or None, env=env)
        path = report.write_json(record, args.output_dir)
        report.append_csv(record, args.output_dir, path)
        print(report.format_table(record), flush=True)
        print(f'wrote {path}', flush=True)

    streamer = engine_runner.RequestStreamer(tokenizer, args.skip_tokenize, args.skip_detokenize,
                                             args.repeat_block_window if args.repeat_block_detect else None)
    stop_ids = engine_runner.stop_token_ids(model_dir, tokenizer)

    def make_gen_config(prompt):
        return engine_runner.generation_config(prompt.max_new_tokens, args.ignore_eos, stop_ids, args.seed)

    warmup_tokens = args.warmup_tokens or facts.block_length or 16
    failed_levels = []  # levels none of whose requests completed: recorded 'failed', and the run exits 1

    async def run():
        try:
            engine = engine_runner.build_engine(model_dir, config_kwargs)
        except engine_runner.ArmMissing as e:
            for level in levels:
                emit(level, 'missing', reason=str(e))
            return
        try:
            async for level, metrics, _ in engine_runner.profile_levels(
                    engine, levels, lambda c: all_prompts[:prompts_per_level(args, c)], streamer, make_gen_config,
                    warmup_tokens):
                level_dllm = engine_runner.read_dllm_metrics() if facts.is_dllm and options.track else None
                failed = metrics.get('failed') or 0
                if not metrics.get('completed'):
                    failed_levels.append(level)
                    emit(level, 'failed', metrics=metrics, reason=f'none of the requests completed ({failed} failed)')
                    continue
                run_notes = [f'{failed} of {failed + metrics["completed"]} requests failed'] if failed else []
                emit(level, 'ok', metrics=metrics, level_dllm=level_dllm, run_notes=run_notes)
            if args.fast_exit:
                fast_exit(1 if failed_levels else 0)
        finally:
            engine.close()

    run_async(run(), settings['event_loop'])
    if failed_levels:
        raise SystemExit(f'profile_throughput: no request completed at concurrency {failed_levels}')


if __name__ == '__main__':
    try:
        main()
    except BenchmarkInputError as e:
        raise SystemExit(f'profile_throughput: error: {e}') from None
