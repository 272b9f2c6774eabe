"""The batch cap upstream gives a DLLM engine, also for a block length read from the model.

Upstream's ``ConfigBuilder.update_engine_config`` lowers ``max_batch_size`` so that a decode step's ``B · L`` rows
fit ``max_prefill_token_num``, but only when ``dllm_block_length`` is set in the engine config. The plugin reads the
block length from the model (an SDAR ``-b<N>`` folder, LLaDA2's 32) inside the engine's model config, after that
cap: ``lmdeploy serve api_server JetLM/SDAR-8B-Chat-b32 --focus`` ran at block 32 with the default batch (1024 on an
H100), decode steps of up to 32,768 rows and CUDA graphs captured for them, where ``--dllm-block-length 32`` gives
256. :func:`cap_batch_for_block_length` applies upstream's rule with the block length the engine will use.
"""
import dataclasses

from .compat import check_prefill_holds_a_block
from .model_facts import local_model_type
from .model_facts import model_block_length as block_length_of


def model_block_length(model_path: str) -> int | None:
    """The block length the engine reads from a local checkpoint when none is configured (None: not one of the
    DLLMs whose block length comes from the model, or none found)."""
    model_type = local_model_type(model_path)  # None: not a local checkpoint (upstream's own checks report it)
    return block_length_of(model_type, model_path) if model_type else None


def cap_batch_for_block_length(model_path: str, engine_config) -> None:
    """Upstream's DLLM batch cap for a block length read from the model, on ``engine_config`` in place: upstream's
    own ``ConfigBuilder.update_engine_config`` run with that block length (it logs the change), its batch size and
    capture sizes kept (upstream already applied it when the config sets the block length)."""
    if engine_config is None or engine_config.dllm_block_length is not None:
        return
    block_length = model_block_length(model_path)
    if not block_length:
        return
    check_prefill_holds_a_block(engine_config.max_prefill_token_num, block_length)
    from lmdeploy.pytorch.engine.config_builder import ConfigBuilder
    capped = ConfigBuilder.update_engine_config(dataclasses.replace(engine_config, dllm_block_length=block_length))
    engine_config.max_batch_size = capped.max_batch_size
    engine_config.cudagraph_capture_batch_sizes = capped.cudagraph_capture_batch_sizes


def capping_engine_checker(upstream_cls):
    """``EngineChecker`` is the first thing ``Engine.__init__`` builds from the local model path and the engine
    config it then reads the scheduler and cache configs from: the cap goes there, before upstream's checks.

    A function that returns upstream's own checker, not a subclass: on CUDA the checker pickles itself into a
    spawned process to run its checks, and a class built here at patch time cannot be found by name there (the
    subclass this replaced failed every engine start with "Can't pickle local object", H100, 2026-12-07)."""

    def EngineChecker(model_path: str, engine_config, *args, **kwargs):  # noqa: N802  (stands in for the class)
        cap_batch_for_block_length(model_path, engine_config)
        return upstream_cls(model_path, engine_config, *args, **kwargs)

    EngineChecker.__lmdeploy_focus_upstream__ = upstream_cls
    return EngineChecker
