"""Serving edge cases of delayed cache / FOCUS end to end through the engine (issue 3, deliverable 5).

    python checks/serving_edge_check.py MODEL_DIR --out OUT.json [--dtype float32|bfloat16]
        [--arms stock delayed_exact delayed_fast focus [focus_leftmost]] [--cases ...]

MODEL_DIR: the committed tiny trained SDAR model ``models/tiny-sdar-5m-b32`` (block 32, byte
tokenizer). Prompts: held-out tasks (chat template) and KJV text (checks/serving_edge/prompts.py).
Decoding as the quality evaluation: greedy (``top_k=1``), ``low_confidence_dynamic`` at threshold
0.9, eager. Per arm, one engine runs the cases

  baseline        every prompt at once, no stop token, N new tokens: the trajectories (run twice:
                  the repeat must be identical)
  max_new_tokens  some requests with max_new_tokens ending mid-block, one batch with the others
  stop_token      some requests with an extra stop token whose first occurrence is mid-block
  abort           streaming, two requests cancelled mid-generation; the others unchanged, then the
                  victims and two others again on the same engine
  staggered       staggered arrivals: batches mixing prefill, warm-up, mid-block and commit steps
  mixed_sampling  every other request samples with its own parameters; the greedy ones unchanged
  logprobs        every other request asks for logprobs: one per returned token, outputs unchanged
  broken_processor every third request's custom logits processor raises: those fail alone
                  (INTERNAL_ENGINE_ERROR, no tokens), the others unchanged, the engine goes on
  own_history     greedy requests with an n-gram filter / repetition penalty / min_new_tokens join
                  neighbours a block ahead: each equals its solo output, the neighbours unchanged

(requests of these carry the model's EOS ids as stop tokens, as a server does), then

  chunked_prefill a second engine with a small max_prefill_token_num, long prompts: outputs must
                  equal the first engine's (which prefills them whole)
  prefix_caching  a third engine with enable_prefix_caching, shared-prefix prompts in two waves:
                  outputs must equal the first engine's, wave 2 must report cached tokens; for
                  delayed_fast the configuration must be refused with the plugin's ValueError.

Expected outputs come from the trajectories through upstream's DLLM stop rule
(serving_edge/logic.py): max_new_tokens or a stop token never change how a block is decoded, only
where the output is cut. Each case records pass / FAIL, sequences identical, and for every
difference its position (block, index in block) and tokens; near-ties are not classified (see
checks/equivalence_check.py for that). One failing case does not stop the others. The JSON is
rewritten after every case; the table is printed at the end; exit status 0 when every case passed.

dtype: float32 by default (set on the config after construction, as equivalence/engine_arm.py), so
that a different batch composition changes logits by ~1e-6 and greedy outputs stay token-identical.
With --dtype bfloat16 the cases that change the batch (all but baseline's repeat) can flip
near-ties: differences are then expected and need the equivalence check's classification.
"""
import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TASKS = os.path.join(os.path.dirname(HERE), 'benchmark', 'data', 'tiny_tasks_heldout.jsonl')


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
from benchmark_packages import load_benchmark_packages  # noqa: E402  (drops benchmark/ from sys.path again)

load_benchmark_packages('arms', 'serving_edge', 'throughput', 'quality')
from serving_edge import logic, prompts as prompt_sets  # noqa: E402
from serving_edge.logic import ERROR, PASS, SKIPPED  # noqa: E402
from quality.engine_backend import release_device_memory  # noqa: E402  (same between engines)

from arms import arm_fields  # noqa: E402

from lmdeploy_focus.config.compat import UNMASKING_STRATEGIES  # noqa: E402

ARMS = {name: arm_fields(name, stock_steps=False) for name in ('stock', 'delayed_exact', 'delayed_fast', 'focus', 'focus_leftmost')}
DEFAULT_ARMS = ('stock', 'delayed_exact', 'delayed_fast', 'focus')  # focus_leftmost: same machinery, other policy
MAIN_CASES = ('baseline', 'max_new_tokens', 'stop_token', 'abort', 'staggered', 'mixed_sampling', 'logprobs',
              'broken_processor', 'own_history')
CASES = MAIN_CASES + ('chunked_prefill', 'prefix_caching')
PREFIX_FAST_MESSAGE = 'enable_prefix_caching'  # the plugin's ValueError names the option (config/compat.py)


def log(message: str) -> None:
    print(f'[edge {time.strftime("%H:%M:%S")}] {message}', flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('model_path', help='model directory (models/tiny-sdar-5m-b32)')
    p.add_argument('--out', required=True, help='result JSON')
    p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16', 'float16', 'auto'),
                   help='engine dtype; float32 makes outputs independent of the batch composition')
    p.add_argument('--arms', nargs='+', default=list(DEFAULT_ARMS), choices=list(ARMS), metavar='ARM',
                   help=f'from: {", ".join(ARMS)}')
    p.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES), metavar='CASE',
                   help=f'from: {", ".join(CASES)} (the main cases after baseline need it and add it)')
    p.add_argument('--task-file', default=DEFAULT_TASKS)
    p.add_argument('--block-length', type=int, default=None, help='None: N of a -b<N> model path, else 32')
    p.add_argument('--max-new-tokens', type=int, default=96, help='N: new tokens of full-length requests')
    p.add_argument('--threshold', type=float, default=0.9, help='dllm_confidence_threshold')
    p.add_argument('--unmasking', default='low_confidence_dynamic', choices=UNMASKING_STRATEGIES)
    p.add_argument('--num-tasks', type=int, default=12, help='task prompts in the main set')
    p.add_argument('--num-text', type=int, default=4, help='KJV text prompts in the main set')
    p.add_argument('--chunk-tokens', type=int, default=128,
                   help='max_prefill_token_num of the chunked-prefill engine (upstream lowers its max_batch_size '
                        'to this / block length); its prompts have at least 2x this + 8 tokens')
    p.add_argument('--prefix-tokens', type=int, default=160, help='shared prefix length of the prefix-caching prompts')
    p.add_argument('--max-batch-size', type=int, default=32)
    p.add_argument('--kv-page', type=int, default=64, help='block_size (KV page), a multiple of the block length')
    p.add_argument('--cache-max-entry-count', type=float, default=0.1)
    p.add_argument('--graphs', action='store_true', help='eager_mode=False (CUDA graphs where the arm allows)')
    p.add_argument('--track', action='store_true', help='dllm_track=True on every engine')
    p.add_argument('--case-timeout', type=float, default=60.0, help='seconds per case before it is recorded failed')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def resolve_block_length(args) -> int:
    if args.block_length:
        return args.block_length
    m = re.search(r'-b(\d+)$', args.model_path.rstrip('/'))
    return int(m.group(1)) if m else 32


def engine_kwargs(args, arm: str, block_length: int, **overrides) -> dict:
    kwargs = dict(max_batch_size=args.max_batch_size,
                  max_prefill_token_num=max(4096, args.max_batch_size * block_length),
                  block_size=args.kv_page, cache_max_entry_count=args.cache_max_entry_count,
                  enable_prefix_caching=False, eager_mode=not args.graphs, dllm_block_length=block_length,
                  dllm_unmasking_strategy=args.unmasking, dllm_denoising_steps=block_length,
                  dllm_confidence_threshold=args.threshold, logprobs_mode='raw_logprobs', **ARMS[arm])
    if args.track:
        kwargs['dllm_track'] = True
    kwargs.update(overrides)
    return kwargs


def make_config(args, kwargs: dict):
    from lmdeploy import PytorchEngineConfig
    config = PytorchEngineConfig(**kwargs)
    if args.dtype != 'auto':
        config.dtype = args.dtype  # after construction: upstream's check allows auto / float16 / bfloat16 only
    return config


def environment() -> dict:
    info = dict(python=platform.python_version(), date=time.strftime('%Y-%m-%d %H:%M'),
                command=' '.join([os.path.basename(sys.executable)] + sys.argv))
    for name in ('torch', 'triton', 'transformers', 'lmdeploy', 'lmdeploy_focus'):
        try:
            module = __import__(name)
            info[name] = getattr(module, '__version__', None)
        except Exception as e:  # noqa: BLE001
            info[name] = f'unavailable: {type(e).__name__}'
    try:
        import torch
        info['gpu'] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info['gpu'] = None
    if info['lmdeploy_focus'] is None:
        try:
            from lmdeploy_focus.version import __version__
            info['lmdeploy_focus'] = __version__
        except ImportError:
            pass
    return info


class Report:
    """The results so far, rewritten to --out after every change."""

    def __init__(self, args, prompt_info: dict, block_length: int):
        self.args = args
        self.data = dict(**environment(), settings=dict(vars(args), block_length=block_length), prompts=prompt_info,
                         arms={})

    def arm(self, arm: str) -> dict:
        return self.data['arms'].setdefault(arm, dict(cases={}, engines={}))

    def record(self, arm: str, case: str, result: dict) -> None:
        self.arm(arm)['cases'][case] = result
        log(f'{arm:15s} {case:16s} {logic.case_cell(result)}'
            + (f'  ({result["error"]})' if result.get('error') else ''))
        self.save()

    def results(self) -> dict:
        return {arm: entry['cases'] for arm, entry in self.data['arms'].items()}

    def save(self) -> None:
        tmp = self.args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.args.out)


def error_result(e: BaseException) -> dict:
    return dict(status=ERROR, error=f'{type(e).__name__}: {e}'.strip()[:2000], traceback=traceback.format_exc()[-4000:])


async def run_case(report: Report, arm: str, case: str, coro, timeout: float):
    """Run one case with a time limit; any failure is recorded and the run goes on. Returns the
    coroutine's value (None on failure)."""
    start = time.perf_counter()
    value = None
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()  # not awaited: a stuck engine must not hold the rest of the run
            raise asyncio.TimeoutError
        value = task.result()
        result = value[0] if isinstance(value, tuple) else value
    except asyncio.TimeoutError:
        result = dict(status=ERROR, error=f'timed out after {timeout:.0f} s')
    except (Exception, SystemExit) as e:  # noqa: BLE001  (lmdeploy's environment checks call sys.exit)
        result = error_result(e)
    result['seconds'] = round(time.perf_counter() - start, 2)
    report.record(arm, case, result)
    return value if result.get('status') != ERROR else None


async def with_engine(report: Report, arm: str, name: str, args, kwargs: dict, block_length: int, body):
    """Build an engine in the running loop, run ``body(runner)``, close it. A build failure is
    returned as an error result (the caller records it on the engine's cases)."""
    from lmdeploy.pytorch.engine import Engine
    from serving_edge.engine_cases import Runner
    entry = report.arm(arm)['engines'].setdefault(name, dict(kwargs=kwargs, dtype=args.dtype))
    start = time.perf_counter()
    try:
        config = make_config(args, kwargs)
        engine = Engine.from_pretrained(args.model_path, engine_config=config, trust_remote_code=True)
    except (Exception, SystemExit) as e:  # noqa: BLE001
        entry.update(error_result(e))
        report.save()
        return entry
    entry['build_seconds'] = round(time.perf_counter() - start, 1)
    resolved = getattr(engine, 'engine_config', None)
    entry['effective_max_batch_size'] = getattr(resolved, 'max_batch_size', None)
    entry['effective_max_prefill_token_num'] = getattr(resolved, 'max_prefill_token_num', None)
    entry['strategy_factory'] = type(getattr(engine, 'strategy_factory', None)).__name__
    report.save()
    try:
        engine.start_loop()
        await body(Runner(engine, block_length, args.seed))
    finally:
        engine.close()
    return None


def build_failed(entry: dict) -> dict:
    # lmdeploy's environment checks log the cause and call sys.exit(1): see the log
    return dict(status=ERROR, error=f'engine build failed: {entry["error"]} (details in the log)')


def skip(report, arm, cases, reason):
    for case in cases:
        report.record(arm, case, dict(status=SKIPPED, error=reason))


async def run_arm(report: Report, arm: str, args, sets: dict, block_length: int, eos_ids: tuple) -> None:
    from serving_edge import engine_cases as ec
    N, L, T = args.max_new_tokens, block_length, args.case_timeout
    cases = set(args.cases)
    main_cases = [c for c in MAIN_CASES if c in cases]
    if main_cases and 'baseline' not in main_cases:
        main_cases.insert(0, 'baseline')
    refs = {}  # trajectories of the long / shared-prefix prompts on the main engine
    fast_commit = ARMS[arm].get('dllm_delayed_cache_commit') == 'fast'

    async def main_body(runner):
        base = None
        if main_cases:
            base = await run_case(report, arm, 'baseline', ec.case_baseline(runner, sets['main'], N), 2 * T)
            if base is None:
                skip(report, arm, main_cases[1:], 'no baseline')
                if 'EngineBroken' in report.arm(arm)['cases']['baseline'].get('error', ''):
                    for key in ('long', 'prefix'):
                        refs[key + '_problem'] = 'the main engine failed its baseline requests'
                    return
        if base is not None:
            traj = base[1]
            if 'max_new_tokens' in cases:
                await run_case(report, arm, 'max_new_tokens',
                               ec.case_max_new_tokens(runner, sets['main'], traj, N, eos_ids), T)
            if 'stop_token' in cases:
                await run_case(report, arm, 'stop_token', ec.case_stop_token(runner, sets['main'], traj, N, eos_ids), T)
            if 'abort' in cases:
                await run_case(report, arm, 'abort', ec.case_abort(runner, sets['main'], traj, N, eos_ids), T)
            if 'staggered' in cases:
                await run_case(report, arm, 'staggered', ec.case_staggered(runner, sets['main'], traj, N, eos_ids), T)
            if 'mixed_sampling' in cases:
                await run_case(report, arm, 'mixed_sampling',
                               ec.case_mixed_sampling(runner, sets['main'], traj, N, eos_ids), T)
            if 'logprobs' in cases:
                await run_case(report, arm, 'logprobs', ec.case_logprobs(runner, sets['main'], traj, N, eos_ids), T)
            if 'broken_processor' in cases:
                await run_case(report, arm, 'broken_processor',
                               ec.case_broken_processor(runner, sets['main'], traj, N, eos_ids), T)
            if 'own_history' in cases:
                await run_case(report, arm, 'own_history',
                               ec.case_own_history(runner, sets['main'], traj, N, eos_ids), 2 * T)
        for key, case in (('long', 'chunked_prefill'), ('prefix', 'prefix_caching')):
            if case in cases and not (case == 'prefix_caching' and fast_commit):
                try:
                    requests = [ec.Request(p, N, (), p.label) for p in sets[key]]
                    outcomes = await asyncio.wait_for(runner.batch(requests), T)
                    bad = [p.label for p, o in zip(sets[key], outcomes) if o.status != 'FINISH' or len(o.tokens) != N]
                    errors = [o.error for o in outcomes if o.error is not None]
                    if errors:
                        refs[key + '_problem'] = f'reference run: {bad} failed: {errors[:3]}'
                        break  # the engine is broken: nothing more on it
                    refs[key] = {p.label: o.tokens for p, o in zip(sets[key], outcomes)}
                    if bad:
                        refs[key + '_problem'] = f'reference run: {bad} did not finish with {N} tokens'
                except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001
                    refs[key + '_problem'] = f'reference run failed: {type(e).__name__}: {e}'
                    break

    needs_main = bool(main_cases) or 'chunked_prefill' in cases or 'prefix_caching' in cases
    if needs_main:
        log(f'{arm}: main engine')
        failed = await with_engine(report, arm, 'main', args, engine_kwargs(args, arm, L), L, main_body)
        release_device_memory()
        if failed:
            if main_cases:
                report.record(arm, main_cases[0], build_failed(failed))
            skip(report, arm, main_cases[1:], 'no main engine')
            skip(report, arm, [c for c in ('chunked_prefill', 'prefix_caching') if c in cases], 'no main engine')
            return

    if 'chunked_prefill' in cases:
        if 'long' not in refs:
            skip(report, arm, ['chunked_prefill'], refs.get('long_problem', 'no reference outputs'))
        else:
            kwargs = engine_kwargs(args, arm, L, max_prefill_token_num=args.chunk_tokens)
            longest = max(len(p.ids) for p in sets['long'])
            shortest = min(len(p.ids) for p in sets['long'])

            async def chunk_body(runner):
                await run_case(report, arm, 'chunked_prefill', ec.case_same_as(
                    runner, sets['long'], refs['long'], N,
                    extra_checks=dict(prompts_longer_than_chunk=shortest > args.chunk_tokens),
                    reference_problem=refs.get('long_problem'), chunk_tokens=args.chunk_tokens,
                    longest_prompt=longest), T)

            log(f'{arm}: chunked-prefill engine (max_prefill_token_num {args.chunk_tokens})')
            failed = await with_engine(report, arm, 'chunked_prefill', args, kwargs, L, chunk_body)
            release_device_memory()
            if failed:
                report.record(arm, 'chunked_prefill', build_failed(failed))

    if 'prefix_caching' in cases:
        kwargs = engine_kwargs(args, arm, L, enable_prefix_caching=True)
        if fast_commit:
            result = ec.check_config_refused(lambda: make_config(args, kwargs), PREFIX_FAST_MESSAGE)
            result['note'] = 'prefix caching with the fast commit must be refused at config time'
            report.record(arm, 'prefix_caching', result)
        elif 'prefix' not in refs:
            skip(report, arm, ['prefix_caching'], refs.get('prefix_problem', 'no reference outputs'))
        else:
            async def prefix_body(runner):
                await run_case(report, arm, 'prefix_caching',
                               ec.case_prefix_caching(runner, sets['prefix'], refs['prefix'], N,
                                                      reference_problem=refs.get('prefix_problem')), T)

            log(f'{arm}: prefix-caching engine')
            failed = await with_engine(report, arm, 'prefix_caching', args, kwargs, L, prefix_body)
            release_device_memory()
            if failed:
                report.record(arm, 'prefix_caching', build_failed(failed))


def build_prompt_sets(args, block_length: int):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.model_path, trust_remote_code=True)
    encoder = prompt_sets.Encoder(tokenizer)
    tasks = prompt_sets.load_task_prompts(args.task_file)
    sets = dict(main=prompt_sets.main_prompts(tasks, encoder, args.num_tasks, args.num_text),
                long=prompt_sets.long_prompts(tasks, encoder, 2 * args.chunk_tokens + 8),
                prefix=prompt_sets.prefix_prompts(tasks, encoder, args.prefix_tokens))
    eos = set()
    if getattr(tokenizer, 'eos_token_id', None) is not None:
        eos.add(tokenizer.eos_token_id)
    try:
        with open(os.path.join(args.model_path, 'generation_config.json')) as f:
            gen_eos = json.load(f).get('eos_token_id')
        eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    except OSError:
        pass
    info = {name: [dict(label=p.label, kind=p.kind, tokens=len(p.ids), in_last_block=len(p.ids) % block_length)
                   for p in specs] for name, specs in sets.items()}
    info['eos_stop_ids'] = sorted(eos)
    info['prefix_shared_tokens'] = {kind: min(prompt_sets.common_prefix_len(a.ids, b.ids)
                                              for a in sets['prefix'] for b in sets['prefix']
                                              if a.kind == b.kind == kind and a is not b)
                                    for kind in ('task', 'text')}
    return sets, tuple(sorted(eos)), info


def main(argv=None):
    args = parse_args(argv)
    block_length = resolve_block_length(args)
    if args.kv_page % block_length:
        raise SystemExit(f'--kv-page {args.kv_page} must be a multiple of the block length {block_length}')
    sets, eos_ids, prompt_info = build_prompt_sets(args, block_length)
    report = Report(args, prompt_info, block_length)
    report.save()
    started = time.perf_counter()
    for arm in args.arms:
        try:
            asyncio.run(run_arm(report, arm, args, sets, block_length, eos_ids))
        except (Exception, SystemExit) as e:  # noqa: BLE001  one broken arm must not end the run
            report.arm(arm)['error'] = error_result(e)
            log(f'{arm}: {report.arm(arm)["error"]["error"]}')
        release_device_memory()
    cases = [c for c in CASES if c in args.cases or (c == 'baseline' and set(args.cases) & set(MAIN_CASES))]
    table = logic.format_table(report.results(), cases)
    report.data.update(table=table, overall=logic.overall_status(report.results()),
                       total_seconds=round(time.perf_counter() - started, 1))
    report.save()
    print(table, flush=True)
    print(f'overall: {report.data["overall"]}  ({report.data["total_seconds"]} s)  -> {args.out}', flush=True)
    return 0 if report.data['overall'] == PASS else 1


if __name__ == '__main__':
    sys.exit(main())
