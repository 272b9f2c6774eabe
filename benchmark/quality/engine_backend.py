"""Tasks through the in-process LMDeploy PyTorch engine, one engine per (arm, threshold) cell.

In-process on purpose: with one GPU the engine and its model agent run in this process (LMDeploy's
``uni`` executor; ``pipeline()`` would too, as long as ``enable_mp_engine`` stays off), so the
decode counters the engine accumulates are readable here through ``lmdeploy_focus.stats``. The
counters are reset once the engine is up and read after the last request. Requests go through
profile_throughput's worker pool (``concurrency`` in flight), greedy (``top_k=1``), stopping on
the tokenizer's and generation_config.json's EOS.

A configuration the engine refuses with ``NotImplementedError`` (a feature not built yet) is
``missing`` with the engine's message; any other error is ``failed``; the run goes on either way.
"""
import asyncio
import gc
from dataclasses import dataclass

from lmdeploy_focus.calibrate.grid import failure_reason
from throughput import engine_runner

from .arms import RunSettings, engine_config_kwargs, focus_options
from .decode_stats import read_engine_stats
from .outcome import FAILED, MISSING, OK, CellOutcome


@dataclass
class Completion:
    token_ids: list
    error: str | None = None


class TokenCollector:
    """``RequestStreamer``'s interface for ``engine_runner.run_requests``, keeping the output ids."""

    async def run(self, instance, session_id: int, prompt, gen_config) -> Completion:
        from lmdeploy.messages import ResponseType
        ids = []
        async for out in instance.async_stream_infer(session_id, prompt.input_ids, gen_config):
            if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                return Completion(ids, out.status.name)
            ids.extend(out.token_ids)  # each output carries the new tokens only
        return Completion(ids)


def release_device_memory():
    """Let the next cell's engine size its KV cache from a clean device."""
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class EngineBackend:
    name = 'engine'

    def __init__(self, model_path: str, settings: RunSettings, stop_ids: list, seed: int = 0,
                 build_engine=engine_runner.build_engine, read_stats=read_engine_stats, progress: bool = True):
        self.model_path = model_path
        self.settings = settings
        self.stop_ids = stop_ids
        self.seed = seed
        self._build_engine = build_engine  # injectable: CPU tests use a fake engine
        self._read_stats = read_stats
        self.progress = progress

    def cell_config(self, arm: str, threshold: float | None) -> dict:
        return dict(engine_config=engine_config_kwargs(arm, threshold, self.settings),
                    focus_options=focus_options(arm).to_dict())

    def _gen_config(self, prompt):
        return engine_runner.generation_config(prompt.max_new_tokens, False, self.stop_ids, self.seed)

    async def _run(self, kwargs: dict, prompts: list, label: str):
        engine = self._build_engine(self.model_path, kwargs)
        try:
            engine.start_loop()
            self._read_stats(reset=True)  # drop what earlier engines in this process left behind
            completions, seconds = await engine_runner.run_requests(engine, prompts, self.settings.concurrency,
                                                                    TokenCollector(), self._gen_config, desc=label,
                                                                    progress=self.progress)
            stats, note = self._read_stats(reset=True)
        finally:
            engine.close()
        return completions, seconds, stats, note

    def run_cell(self, arm: str, threshold: float | None, prompts: list) -> CellOutcome:
        config = self.cell_config(arm, threshold)
        outcome = CellOutcome(arm, threshold, OK, config=config)
        try:
            completions, seconds, stats, note = asyncio.run(
                self._run(config['engine_config'], prompts, f'{arm} threshold {threshold}'))
        except (engine_runner.ArmMissing, NotImplementedError) as e:
            outcome.status, outcome.reason = MISSING, str(e) or type(e).__name__
            return outcome
        except Exception as e:  # noqa: BLE001  one broken cell must not end the evaluation
            outcome.status, outcome.reason = FAILED, failure_reason(e)
            return outcome
        finally:
            release_device_memory()
        outcome.token_ids = [c.token_ids for c in completions]
        outcome.errors = [c.error for c in completions]
        outcome.stats, outcome.stats_note = stats, note
        outcome.seconds = round(seconds, 3)
        return outcome
