"""One engine run of token-id prompts with the step recorder on (GPU; the engine runs in this process).

Prompts go in as token ids (no tokenizer round trip), so the CPU reference can run the very same
ids, even before the engine has started. Sampling: greedy with temperature 1, so the unmasker's
confidence is the softmax of the raw logits, as in the reference; no stop tokens (nothing banned,
nothing stopping early): every sequence runs to ``max_new_tokens``, like ``reference_generate``
with ``stop_token_ids=None``.
"""
import asyncio
import gc
import os
import shutil
import time

from lmdeploy_focus_dev.testing import step_recorder

from lmdeploy_focus.strategies.dllm.delayed_cache_runtime import PROCESS_ALL_ENV  # the engine's own name


def generation_config(max_new_tokens: int):
    from lmdeploy.messages import GenerationConfig
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, temperature=1.0,
                            ignore_eos=False, stop_token_ids=None)


async def _generate(engine, prompts: list[list[int]], gen_config) -> list[list[int]]:
    from lmdeploy.messages import ResponseType
    engine.start_loop()

    async def one(session_id: int, ids: list[int]) -> list[int]:
        instance = engine.create_instance()
        tokens = []
        async for out in instance.async_stream_infer(session_id, ids, gen_config):
            if out.status not in (ResponseType.SUCCESS, ResponseType.FINISH):
                raise RuntimeError(f'session {session_id}: {out.status.name}')
            tokens.extend(out.token_ids)
        return tokens

    # all requests are queued in one tick, so the first prefill batch normally holds every prompt
    return list(await asyncio.gather(*(one(i + 1, p) for i, p in enumerate(prompts))))


async def _build_and_generate(model_path: str, config, prompts: list[list[int]], max_new_tokens: int) -> dict:
    # built and closed inside the running event loop, as benchmark/profile_throughput.py does
    from lmdeploy.pytorch.engine import Engine
    start = time.perf_counter()
    engine = Engine.from_pretrained(model_path, engine_config=config, trust_remote_code=True)
    try:
        build_seconds = time.perf_counter() - start
        start = time.perf_counter()
        tokens = await _generate(engine, prompts, generation_config(max_new_tokens))
        return dict(tokens=tokens, build_seconds=round(build_seconds, 1),
                    generate_seconds=round(time.perf_counter() - start, 2),
                    model_dtype=str(getattr(getattr(engine, 'model_config', None), 'dtype', None)),
                    strategy_factory_class=type(getattr(engine, 'strategy_factory', None)).__name__)
    finally:
        engine.close()


def run_arm(model_path: str, prompts: list[list[int]], max_new_tokens: int, record_dir: str, engine_kwargs: dict,
            env: dict | None = None, dtype: str | None = None) -> dict:
    """Run ``prompts`` through a fresh engine that records its steps to ``record_dir``.

    ``dtype``: set on the engine config after construction, so ``'float32'`` gets past upstream's
    check (which allows auto / float16 / bfloat16 only); the model is then built in fp32.
    """
    import torch
    from lmdeploy import PytorchEngineConfig

    shutil.rmtree(record_dir, ignore_errors=True)
    overrides = {step_recorder.RECORD_ENV: str(record_dir), **(env or {})}
    saved = {k: os.environ.get(k) for k in (*overrides, PROCESS_ALL_ENV)}
    os.environ.pop(PROCESS_ALL_ENV, None)
    os.environ.update(overrides)
    try:
        config = PytorchEngineConfig(**engine_kwargs)
        if dtype is not None:
            config.dtype = dtype
        outcome = asyncio.run(_build_and_generate(model_path, config, prompts, max_new_tokens))
        outcome.update(requested_dtype=dtype, engine_config_class=f'{type(config).__module__}.{type(config).__name__}')
        return outcome
    finally:
        step_recorder.flush_all(release=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
