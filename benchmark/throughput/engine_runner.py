"""In-process PyTorch engine, one async worker per concurrency slot.

Each worker owns an ``EngineInstance`` and runs one request at a time, so ``concurrency`` is the
number of requests in flight (the "batch size" of the fork's figures). Arms whose engine feature is
not implemented yet (the engine raises ``NotImplementedError`` at start) come back as *missing* with
the engine's message; nothing is estimated in their place.
"""
import argparse
import ast
import asyncio
import itertools
import os
import time
from dataclasses import dataclass

from lmdeploy_focus.config.model_facts import DLLM_MODEL_TYPES, local_model_type, model_block_length
from lmdeploy_focus.config.options import OPTIONS

from .errors import BenchmarkInputError
from .metrics import RequestRecord, summarize
from .prompts import encode
from .repeat_guard import RepeatGuard

# prefill budget per slot when the model has no block (AR); the fork sizes it as concurrency * L
AR_SIZING_BLOCK = 32
# the fork's KV page (block_size): a multiple of every SDAR block length; the quality runs size the same way
KV_PAGE = 64
DLLM_TRACK_MISSING = ('--dllm-track statistics were not found in this process (engine without the lmdeploy-focus '
                      'plugin, or running in another process)')


class ArmMissing(Exception):
    """The engine refused the configuration because the feature is not implemented yet."""


@dataclass
class ModelFacts:
    model_type: str
    is_dllm: bool
    block_length: int | None  # what the benchmark sizes the engine with (the engine resolves its own)


def check_hub_id(model_path: str) -> None:
    """A path that is not a folder must read as a hub id: a mistyped local path is not sent to the hub (a traceback
    after retries)."""
    import argparse

    from lmdeploy_focus.cli.preflight import model_path as checked_model_path
    try:
        checked_model_path(model_path)
    except argparse.ArgumentTypeError as e:
        raise BenchmarkInputError(str(e)) from None


def local_model_path(model_path: str) -> str:
    """The folder the engine will load: a hub id is fetched (or found in the hub cache) by upstream's ``get_model``,
    as ``Engine.__init__`` does with it, so the model's type and block length are known before the engine starts
    (a hub id read as no model: the drivers' default ``JetLM/SDAR-8B-Chat-b32`` ran labelled ``ar``, its
    statistics unread)."""
    if os.path.exists(model_path):
        return model_path
    check_hub_id(model_path)
    from lmdeploy.utils import get_model
    try:
        return get_model(model_path)
    except Exception as e:  # noqa: BLE001  offline, unknown repo, no access: the hub client's message, one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BenchmarkInputError(f'cannot fetch {model_path!r} from the model hub: {first}') from None


def engine_config(config_kwargs: dict):
    """The engine config of ``config_kwargs``, a bad option value one line (before the model is loaded)."""
    from lmdeploy import PytorchEngineConfig
    try:
        return PytorchEngineConfig(**config_kwargs)
    except ValueError as e:
        raise BenchmarkInputError(str(e)) from None


def model_facts(model_path: str, block_length_arg: int | None) -> ModelFacts:
    """Facts of the local folder ``model_path`` (:func:`local_model_path`)."""
    model_type = local_model_type(model_path) or ''  # no config.json: upstream's model checks report it
    is_dllm = model_type in DLLM_MODEL_TYPES
    block = block_length_arg
    if block is None and is_dllm:
        # the engine's own reading (hub cache snapshots, '.', symlinks, LLaDA2's default), so the prefill budget and
        # batch sized here are the ones the engine keeps (patch 19 caps the batch by the same block length)
        block = model_block_length(model_type, model_path)
    return ModelFacts(model_type, is_dllm, block)


def engine_config_kwargs(args, max_concurrency: int, facts: ModelFacts) -> dict:
    """The fork's per-run settings: batch = concurrency, prefill budget concurrency * L, page 64."""
    sizing_block = facts.block_length or AR_SIZING_BLOCK
    kwargs = dict(max_batch_size=max_concurrency,
                  max_prefill_token_num=args.max_prefill_token_num or max_concurrency * sizing_block,
                  block_size=KV_PAGE,
                  cache_max_entry_count=args.cache_max_entry_count,
                  enable_prefix_caching=False,
                  eager_mode=args.eager_mode)
    if args.session_len:
        kwargs['session_len'] = args.session_len
    dllm = dict(dllm_block_length=args.dllm_block_length,
                dllm_unmasking_strategy=args.dllm_unmasking_strategy,
                dllm_denoising_steps=args.dllm_denoising_steps,
                dllm_confidence_threshold=args.dllm_confidence_threshold,
                # the FOCUS options: one flag per row of the option table; None = not given
                **{option.field: getattr(args, option.field, None) for option in OPTIONS})
    kwargs.update({k: v for k, v in dllm.items() if v is not None})
    kwargs.update({f'dllm_{name}': value for name, value in getattr(args, 'dllm_option', None) or []})
    return kwargs


def dllm_option(text: str) -> tuple[str, object]:
    """argparse type of ``--dllm-option NAME=VALUE``: ``(NAME, value)``, the value a Python literal where it
    parses as one, else the text. The engine config checks the option itself."""
    name, sep, value = text.partition('=')
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f'takes NAME=VALUE (e.g. focus_auto_shadow_every=32), got {text!r}')
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name.strip(), value


def require_cuda(why: str = '') -> None:
    """One line when no CUDA GPU can run the engine (upstream's checker said 'PyTorch is not available.')."""
    from lmdeploy_focus.cli.preflight import cuda_problem
    problem = cuda_problem('cuda')
    if problem:
        raise BenchmarkInputError(problem + why)


def build_engine(model_path: str, config_kwargs: dict):
    """Engine.from_pretrained; NotImplementedError (feature not built yet) becomes ArmMissing."""
    from lmdeploy.pytorch.engine import Engine

    require_cuda()
    config = engine_config(config_kwargs)
    try:
        return Engine.from_pretrained(model_path, engine_config=config, trust_remote_code=True)
    except NotImplementedError as e:
        raise ArmMissing(str(e)) from None


def stop_token_ids(model_path: str, tokenizer) -> list:
    """EOS ids the pipeline would stop on: the tokenizer's and generation_config.json's, read as the calibration
    command reads them (a malformed file is one line naming it, not a traceback)."""
    from lmdeploy_focus.calibrate.checks import InputError
    from lmdeploy_focus.calibrate.checks import stop_token_ids as read_stop_ids
    try:
        return list(read_stop_ids(model_path, tokenizer))
    except InputError as e:
        raise BenchmarkInputError(str(e)) from None


def generation_config(max_new_tokens: int, ignore_eos: bool, stop_ids: list, seed: int):
    from lmdeploy.messages import GenerationConfig
    # greedy (top_k=1) as in the fork's throughput runs
    return GenerationConfig(max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, do_sample=False, top_k=1,
                            stop_token_ids=None if ignore_eos else stop_ids, random_seed=seed)


class RequestStreamer:
    """Runs one request through an EngineInstance and records its timings."""

    def __init__(self, tokenizer=None, skip_tokenize=True, skip_detokenize=True, repeat_window=None):
        self.tokenizer = tokenizer
        self.skip_tokenize = skip_tokenize
        self.skip_detokenize = skip_detokenize
        self.repeat_window = repeat_window

    async def run(self, instance, session_id: int, prompt, gen_config) -> RequestRecord:
        from lmdeploy.messages import ResponseType
        start = time.perf_counter()
        # without --skip-tokenize, tokenisation is part of the timed request
        ids = prompt.input_ids if (self.skip_tokenize or prompt.text is None) else encode(self.tokenizer, prompt.text)
        rec = RequestRecord(input_len=len(ids), start=start)
        guard = RepeatGuard(self.repeat_window) if self.repeat_window else None
        counted = 0
        stopping = False
        async for out in instance.async_stream_infer(session_id, ids, gen_config):
            now = time.perf_counter()
            if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH, ResponseType.CANCEL):
                rec.status, rec.error = 'error', out.status.name
                break
            if stopping:
                continue  # output after the repetition stop is not counted; wait for the engine's CANCEL
            chunk = list(out.token_ids)
            if guard is not None and guard.feed(chunk):
                chunk = chunk[:guard.stop_at - counted]
                stopping = True
            counted += len(chunk)
            rec.add_chunk(now, len(chunk))
            if chunk and not self.skip_detokenize:
                self.tokenizer.decode(chunk)
            rec.end = now
            if stopping:
                rec.status = 'repeat_stopped'
                await instance.async_cancel(session_id)
        rec.output_len = counted
        if not rec.chunk_times and rec.status != 'error':
            rec.status, rec.error = 'error', 'no output'
        return rec


class ProgressBar:
    """tqdm when installed, else a line every 10%."""

    def __init__(self, total: int, desc: str):
        self.total, self.done, self.desc = total, 0, desc
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, unit='req', dynamic_ncols=True)
        except ImportError:
            self.bar = None

    def update(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            print(f'{self.desc}: {self.done}/{self.total} requests', flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


_session_ids = itertools.count(1)


async def run_requests(engine, prompts: list, concurrency: int, streamer: RequestStreamer, make_gen_config,
                       desc: str = 'requests', progress: bool = True):
    """``concurrency`` workers drain the prompt list; returns (records in prompt order, wall seconds)."""
    pending = iter(enumerate(prompts))  # shared by the workers; next() never awaits, so no lock is needed
    records = [None] * len(prompts)
    bar = ProgressBar(len(prompts), desc) if progress else None

    async def worker():
        instance = engine.create_instance()
        for idx, prompt in pending:
            records[idx] = await streamer.run(instance, next(_session_ids), prompt, make_gen_config(prompt))
            if bar is not None:
                bar.update()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
    duration = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return records, duration


async def profile_levels(engine, levels: list, prompts_for, streamer, make_gen_config, warmup_tokens: int):
    """Warm up and measure each concurrency level on one engine; yields (level, summary, records)."""
    engine.start_loop()
    for level in levels:
        prompts = prompts_for(level)
        # first requests at a new batch size compile kernels: keep that out of the timed region
        warm = [type(p)(p.input_ids, warmup_tokens, p.text) for p in prompts[:level]]
        await run_requests(engine, warm, level, streamer, make_gen_config, progress=False)
        read_dllm_metrics()  # the warm-up's statistics are not part of the level
        records, duration = await run_requests(engine, prompts, level, streamer, make_gen_config,
                                               desc=f'concurrency {level}')
        yield level, summarize(records, duration), records


def read_dllm_metrics() -> dict | None:
    """The engine's dllm_track run statistics since the last call (in-process engine), as the report's
    DLLM metrics; None when this process has none (no --dllm-track, or the plugin is absent)."""
    try:
        from lmdeploy_focus.stats import read_run_report
    except ImportError:
        return None
    run = read_run_report(reset=True)
    if run is None:
        return None
    return dict(run, status='ok', processed_tokens=run['deep_tokens'], layer0_tokens=run['processed_tokens'],
                denoising_steps=run['decode_steps'])
