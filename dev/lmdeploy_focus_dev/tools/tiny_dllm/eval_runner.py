"""Run the whole evaluation (tasks and text at every threshold), spread over CPU processes.

The reference decode loop runs fp32 on the CPU, one whole block per sequence and forward, so the
work is split into units of ``chunk`` prompts at one threshold and handed to a pool of
single-threaded worker processes (each loads the checkpoint once). Units still waiting when the
deadline passes are dropped (a running unit still finishes); the report then says how many prompts
each summary covers.
"""
import os
import time
from concurrent.futures import ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import torch

from lmdeploy_focus_dev.reference.checkpoint import load_hf_config, load_sdar_checkpoint

from .data import TextCorpus
from .evaluate import (HELDOUT_TASK_SEED, THRESHOLDS, heldout_tasks, summarize_tasks, summarize_text,
                       task_records, text_prompts, text_records)

_worker_ckpt = None


def _load(model_dir: str) -> None:
    global _worker_ckpt
    _worker_ckpt = load_sdar_checkpoint(model_dir, dtype=torch.float32)


def _init_worker(model_dir: str) -> None:
    torch.set_num_threads(1)  # one process per core
    _load(model_dir)


def _run_unit(kind: str, items: list, threshold: float, block_length: int) -> list[dict]:
    fn = task_records if kind == 'tasks' else text_records
    return fn(_worker_ckpt, items, threshold, block_length)


def _units(tasks, prompts, thresholds, chunk):
    """(kind, threshold, start, items) in priority order: the first threshold's work first."""
    for threshold in thresholds:
        for kind, items in (('tasks', tasks), ('text', prompts)):
            for start in range(0, len(items), chunk):
                yield kind, threshold, start, items[start:start + chunk]


def run_evaluation(model_dir: str | Path, heldout_text: TextCorpus | None, num_tasks: int, num_text: int,
                   thresholds=THRESHOLDS, block_length: int = 32, workers: int | None = None, chunk: int = 16,
                   deadline_seconds: float | None = None, log=print) -> dict:
    start_time = time.perf_counter()
    tasks = heldout_tasks(num_tasks)
    prompts = text_prompts(heldout_text, num_text) if heldout_text is not None and num_text else []
    units = list(_units(tasks, prompts, thresholds, chunk))
    workers = max(1, min(workers or os.cpu_count() or 1, len(units)))
    results: dict[tuple, list[dict]] = {}
    # remote-code config copied into the HF modules cache once, before workers load it concurrently
    load_hf_config(model_dir)
    if workers == 1:
        _load(str(model_dir))
        for kind, threshold, first, items in units:
            if deadline_seconds is not None and time.perf_counter() - start_time > deadline_seconds:
                break
            results[kind, threshold, first] = _run_unit(kind, items, threshold, block_length)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context('spawn'), initializer=_init_worker,
                                 initargs=(str(model_dir), )) as pool:
            futures = {pool.submit(_run_unit, kind, items, threshold, block_length): (kind, threshold, first)
                       for kind, threshold, first, items in units}
            left = None if deadline_seconds is None else max(0.0, deadline_seconds - (time.perf_counter() - start_time))
            _, pending = wait(futures, timeout=left)
            for future in pending:
                future.cancel()  # units already running cannot be cancelled: they finish at shutdown
        for future, key in futures.items():
            if not future.cancelled():
                results[key] = future.result()
    dropped = len(units) - len(results)

    report = {'model': str(model_dir), 'unmasking': 'low_confidence_dynamic',
              'decoder': 'reference.dllm_decode.reference_generate (CPU, stored weights computed in fp32)',
              'task_sample': f'first {num_tasks} held-out tasks of seed {HELDOUT_TASK_SEED!r}',
              'units_dropped_at_deadline': dropped, 'tasks': [], 'text': []}
    for threshold in thresholds:
        for kind, items, summarize in (('tasks', tasks, summarize_tasks), ('text', prompts, summarize_text)):
            covered, records = [], []
            for first in range(0, len(items), chunk):  # in order; a dropped chunk leaves a gap
                if (kind, threshold, first) in results:
                    covered += items[first:first + chunk]
                    records += results[kind, threshold, first]
            if records:
                summary = summarize(covered, records, threshold)
                report[kind].append(summary)
                log(f'{kind} @ {threshold}: ' + ', '.join(f'{k} {summary[k]}' for k in
                                                         ('exact_match', 'tokens_per_forward', 'co_decoded_by_span')
                                                         if k in summary))
    report['seconds'] = round(time.perf_counter() - start_time, 1)
    return report
