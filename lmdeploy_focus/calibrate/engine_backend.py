"""The ``engine`` calibration backend: LMDeploy's PyTorch engine with the plugin, one engine per run (CUDA).

In-process (one GPU: upstream's ``uni`` executor), so the run's counters are read here
(:func:`lmdeploy_focus.stats.read_run_stats`), reset once the engine is up. Requests are token ids,
``batch_size`` in flight, greedy (``top_k=1``), stopping on the given stop ids.
"""
import asyncio
import gc

from ..config.options import OPTIONS_KEY
from ..stats import read_run_stats
from .backends import BackendSettings, BackendUnavailable


class EngineBackend:
    name = 'engine'

    def __init__(self, settings: BackendSettings):
        import torch
        if not torch.cuda.is_available():
            raise BackendUnavailable('the engine backend needs a CUDA GPU (none is available here); use --backend '
                                     'reference (CPU) or auto')
        self.settings = settings

    def _engine(self, cell):
        from lmdeploy import PytorchEngineConfig
        from lmdeploy.pytorch.engine import Engine
        s = self.settings
        config = PytorchEngineConfig(dllm_block_length=s.block_length, dllm_confidence_threshold=s.confidence_threshold,
                                     dllm_unmasking_strategy='low_confidence_dynamic', max_batch_size=s.batch_size,
                                     block_size=max(64, s.block_length),  # a KV page holds whole blocks
                                     eager_mode=s.eager_mode, hf_overrides={OPTIONS_KEY: cell.focus_options()})
        return Engine.from_pretrained(s.model_path, engine_config=config, trust_remote_code=True)

    def run(self, cell, prompts: list[list[int]], max_new_tokens: list[int]):
        from lmdeploy.messages import GenerationConfig, ResponseType
        engine = self._engine(cell)
        stop_ids = list(self.settings.stop_token_ids) or None
        limit = asyncio.Semaphore(self.settings.batch_size)

        async def one(session_id, ids, max_new):
            config = GenerationConfig(max_new_tokens=max_new, do_sample=False, top_k=1, stop_token_ids=stop_ids)
            out_ids = []
            async with limit:
                instance = engine.create_instance()
                async for out in instance.async_stream_infer(session_id, ids, config):
                    if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                        raise RuntimeError(f'request {session_id} ended with {out.status.name}')
                    out_ids.extend(out.token_ids)  # each output carries the new tokens only
            return out_ids

        async def all_requests():
            return await asyncio.gather(*(one(i + 1, p, m) for i, (p, m) in enumerate(zip(prompts, max_new_tokens))))

        try:
            read_run_stats(reset=True)  # drop warm-up counts
            token_ids = asyncio.run(all_requests())
            counts = read_run_stats(reset=True)
        finally:
            engine.close()
            del engine
            gc.collect()
        if counts is None:
            raise RuntimeError('the engine reported no DLLM statistics (dllm_track did not reach the engine)')
        return counts, token_ids


def make_backend(settings: BackendSettings) -> EngineBackend:
    return EngineBackend(settings)
