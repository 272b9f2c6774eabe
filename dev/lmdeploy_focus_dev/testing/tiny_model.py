"""Build a tiny random-weight DLLM through upstream's own construction path, on CPU.

Path mirrored from the model agent: HF config → ``ModelConfig.from_hf_config`` (config builders,
including any the plugin registered) → ``build_strategy_factory`` (honours the plugin's factory
swap; writes the block length into the configs) → ``BuildModelContext(dllm_config, strategy_factory)``
→ ``build_patched_model`` (module map, so a class registered in ``CUSTOM_MODULE_MAP`` is used) →
``load_weights`` from HF-named tensors. The model families add their config and weights
(:mod:`.sdar_cpu`, :mod:`.llada2_cpu`).
"""
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from lmdeploy.pytorch.config import DLLMConfig, MiscConfig, ModelConfig, override_hf_config
from lmdeploy.pytorch.model_inputs import BuildModelContext, StepContextManager
from lmdeploy.pytorch.models.patch import build_model_context, build_patched_model
from lmdeploy.pytorch.strategies import build_strategy_factory
from lmdeploy.pytorch.weight_loader.model_weight_loader import process_weights_after_loading
from transformers import PretrainedConfig

from lmdeploy_focus.config.options import OPTIONS_KEY, FocusOptions
from lmdeploy_focus_dev.testing.cpu_backend_selector import upstream_on_cpu
from lmdeploy_focus_dev.testing.dllm_runner import CpuDLLMRunner
from lmdeploy_focus_dev.testing.paged_kv_cache import PagedKVCache

WeightsFn = Callable[[PretrainedConfig, torch.Generator], dict[str, torch.Tensor]]


@dataclass
class TinyDLLM:
    """A built model plus what tests need to check it independently."""
    model: torch.nn.Module
    hf_config: PretrainedConfig
    model_config: ModelConfig
    weights: dict[str, torch.Tensor]  # HF names, as loaded into the model
    seed: int  # reproduces the weights
    block_length: int = field(init=False)

    def __post_init__(self):
        self.block_length = self.model_config.dllm_block_length

    def weights_as(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The loaded weights in ``dtype`` (e.g. float64 for the reference)."""
        return {name: w.to(dtype) for name, w in self.weights.items()}

    def new_runner(self, page_size: int = 16, num_pages: int = 64) -> CpuDLLMRunner:
        """A fresh batch with its own (NaN-initialised) paged KV cache."""
        hf = self.hf_config
        kv_cache = PagedKVCache(num_layers=hf.num_hidden_layers,
                                num_pages=num_pages,
                                page_size=page_size,
                                num_kv_heads=hf.num_key_value_heads,
                                head_dim=hf.head_dim,
                                dtype=self.model_config.dtype,
                                seed=self.seed)
        return CpuDLLMRunner(self.model, self.model_config, kv_cache)


def harness_overrides(hf_overrides: dict) -> dict:
    """``hf_overrides`` with the FOCUS option ``stock_step_rows`` at 0 unless given: the harness's batches are small,
    and a test of the delayed-cache / FOCUS step must not get upstream's stock step at them (the engine's default
    runs stock steps up to 64 block rows); a test of stock steps sets the option itself."""
    options = hf_overrides.get(OPTIONS_KEY)
    if not isinstance(options, dict) or 'stock_step_rows' in options:
        return hf_overrides
    if not FocusOptions.from_dict(options).resolved().uses_sparse_decode:
        return hf_overrides  # stock decoding: the option is not read (and set, it would be warned about)
    return {**hf_overrides, OPTIONS_KEY: {**options, 'stock_step_rows': 0}}


def build_tiny_model(hf_config: PretrainedConfig,
                     weights_fn: WeightsFn,
                     block_length: int = 4,
                     seed: int | None = None,
                     hf_overrides: dict | None = None,
                     model_cls: Callable | None = None,
                     dtype: str = 'float32',
                     dllm_config: DLLMConfig | None = None) -> TinyDLLM:
    """Build and load a random-weight DLLM on CPU.

    Args:
        hf_config: the checkpoint's config (its ``mask_token_id`` is the mask token).
        weights_fn: ``(hf_config, generator) -> {HF name: tensor}``.
        block_length: DLLM block length ``L`` (engine option ``dllm_block_length``).
        seed: weight seed; ``None`` draws a fresh one (kept in ``TinyDLLM.seed``).
        hf_overrides: applied to the HF config like ``PytorchEngineConfig.hf_overrides``
            (e.g. FOCUS options).
        model_cls: build this class instead of the module-map lookup (e.g. an upstream class
            while the plugin has registered its own).
        dtype: the engine's dtype (``float32``; ``float64`` where fp32 rounding could flip a
            discrete decision, such as MoE routing, against an fp64 oracle).
        dllm_config: the unmasking settings the strategy factory sees (FOCUS's first-step average
            depends on them); its block length is replaced by ``block_length``. Default: upstream's.
    """
    if seed is None:
        seed = secrets.randbits(31)  # torch's default RNG starts from a fixed seed every process
    model_config = ModelConfig.from_hf_config(hf_config, dtype=dtype, device_type='cpu')
    if hf_overrides:
        override_hf_config(model_config.hf_config, harness_overrides(hf_overrides))
    # Upstream's SDAR config builder hard-codes 151669, which does not fit a tiny vocab.
    model_config.dllm_mask_token = hf_config.mask_token_id

    dllm_config = replace(dllm_config or DLLMConfig(), block_length=block_length)
    misc_config = MiscConfig(dllm_config=dllm_config)
    strategy_factory = build_strategy_factory(model_config, misc_config)
    build_ctx = BuildModelContext(dllm_config=misc_config.dllm_config,
                                  strategy_factory=strategy_factory,
                                  max_batch_size=64)
    weights = weights_fn(model_config.hf_config, torch.Generator().manual_seed(seed))
    cpu = torch.device('cpu')
    with upstream_on_cpu(), torch.inference_mode():
        if model_cls is None:
            model = build_patched_model(model_config, device=cpu, build_model_ctx=build_ctx)
        else:
            with build_model_context(build_ctx):
                model = model_cls(model_config.hf_config,
                                  StepContextManager(build_ctx),
                                  dtype=model_config.dtype,
                                  device=cpu).eval()
        model.load_weights(iter(weights.items()))
        process_weights_after_loading(model)
    return TinyDLLM(model=model, hf_config=model_config.hf_config, model_config=model_config, weights=weights,
                    seed=seed)
