"""A tiny random-weight SDAR built through upstream's own construction path, on CPU (fp32).

Path mirrored from the model agent: HF config → ``ModelConfig.from_hf_config`` (config builders,
including any the plugin registered) → ``build_strategy_factory`` (honours the plugin's factory
swap; writes the block length into the configs) → ``BuildModelContext(dllm_config, strategy_factory)``
→ ``build_patched_model`` (module map, so a class registered in ``CUSTOM_MODULE_MAP`` is used) →
``load_weights`` from HF-named tensors.

Typical use::

    sdar = build_tiny_sdar(block_length=4)
    runner = sdar.new_runner(page_size=16)
    block_logits = runner.prefill([[5, 6, 7], [8, 9, 10, 11, 12]])      # [2, 4, vocab]
    block_logits = runner.decode_step(new_blocks)                        # [2, 4, vocab]
    k, v = runner.kv_cache.read(layer=0, seq_id=1, kv_len=8)
"""
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from lmdeploy.pytorch.config import DLLMConfig, MiscConfig, ModelConfig, override_hf_config
from lmdeploy.pytorch.model_inputs import BuildModelContext, StepContextManager
from lmdeploy.pytorch.models.patch import build_model_context, build_patched_model
from lmdeploy.pytorch.strategies import build_strategy_factory
from lmdeploy.pytorch.weight_loader.model_weight_loader import process_weights_after_loading
from transformers import PretrainedConfig

from lmdeploy_focus.patch.cpu_backend_selector import upstream_on_cpu
from lmdeploy_focus.testing.dllm_runner import CpuDLLMRunner
from lmdeploy_focus.testing.paged_kv_cache import PagedKVCache


@dataclass(frozen=True)
class TinySDARShape:
    """Sizes of the test model (GQA: 2 query heads per kv head)."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    vocab_size: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096


def tiny_sdar_hf_config(shape: TinySDARShape = TinySDARShape(), mask_token_id: int | None = None) -> PretrainedConfig:
    """HF config of an SDAR checkpoint (``model_type='sdar'``) with ``shape``'s sizes.

    The mask token defaults to the last vocab id: the real one (151669) does not fit a tiny vocab.
    """
    return PretrainedConfig(
        model_type='sdar',
        architectures=['SDARForCausalLM'],
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        intermediate_size=shape.intermediate_size,
        vocab_size=shape.vocab_size,
        rms_norm_eps=shape.rms_norm_eps,
        max_position_embeddings=shape.max_position_embeddings,
        # transformers >= 5 reads RoPE settings from rope_parameters (rope_theta alone is ignored)
        rope_parameters=dict(rope_type='default', rope_theta=shape.rope_theta),
        attention_bias=False,
        sliding_window=None,
        use_sliding_window=False,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        mask_token_id=shape.vocab_size - 1 if mask_token_id is None else mask_token_id,
        dtype='float32',
    )


def random_sdar_weights(hf_config: PretrainedConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random fp32 weights under HF checkpoint names (separate q/k/v and gate/up projections).

    Linear weights ~ N(0, 1/fan_in) keep activations O(1); norm weights ~ 1 + N(0, 0.1²) so a
    wrongly skipped or misplaced norm weight changes the output.
    """
    hidden = hf_config.hidden_size
    head_dim = hf_config.head_dim
    q_dim = hf_config.num_attention_heads * head_dim
    kv_dim = hf_config.num_key_value_heads * head_dim
    inter = hf_config.intermediate_size

    def linear(out_features, in_features):
        return torch.randn(out_features, in_features, generator=generator) / in_features**0.5

    def norm(size):
        return 1 + 0.1 * torch.randn(size, generator=generator)

    weights = {'model.embed_tokens.weight': torch.randn(hf_config.vocab_size, hidden, generator=generator)}
    for i in range(hf_config.num_hidden_layers):
        p = f'model.layers.{i}.'
        weights.update({
            p + 'input_layernorm.weight': norm(hidden),
            p + 'self_attn.q_proj.weight': linear(q_dim, hidden),
            p + 'self_attn.k_proj.weight': linear(kv_dim, hidden),
            p + 'self_attn.v_proj.weight': linear(kv_dim, hidden),
            p + 'self_attn.o_proj.weight': linear(hidden, q_dim),
            p + 'self_attn.q_norm.weight': norm(head_dim),
            p + 'self_attn.k_norm.weight': norm(head_dim),
            p + 'post_attention_layernorm.weight': norm(hidden),
            p + 'mlp.gate_proj.weight': linear(inter, hidden),
            p + 'mlp.up_proj.weight': linear(inter, hidden),
            p + 'mlp.down_proj.weight': linear(hidden, inter),
        })
    weights['model.norm.weight'] = norm(hidden)
    weights['lm_head.weight'] = linear(hf_config.vocab_size, hidden)
    return weights


@dataclass
class TinySDAR:
    """A built model plus what tests need to check it independently."""
    model: torch.nn.Module
    hf_config: PretrainedConfig
    model_config: ModelConfig
    weights: dict[str, torch.Tensor]  # HF names, as loaded into the model
    seed: int  # reproduces the weights: build_tiny_sdar(seed=...)
    block_length: int = field(init=False)

    def __post_init__(self):
        self.block_length = self.model_config.dllm_block_length

    def new_runner(self, page_size: int = 16, num_pages: int = 64) -> CpuDLLMRunner:
        """A fresh batch with its own (NaN-initialised) paged KV cache."""
        hf = self.hf_config
        kv_cache = PagedKVCache(num_layers=hf.num_hidden_layers,
                                num_pages=num_pages,
                                page_size=page_size,
                                num_kv_heads=hf.num_key_value_heads,
                                head_dim=hf.head_dim,
                                dtype=torch.float32,
                                seed=self.seed)
        return CpuDLLMRunner(self.model, self.model_config, kv_cache)


def build_tiny_sdar(shape: TinySDARShape = TinySDARShape(),
                    block_length: int = 4,
                    seed: int | None = None,
                    hf_overrides: dict | None = None,
                    model_cls: Callable | None = None) -> TinySDAR:
    """Build and load a random-weight SDAR on CPU.

    Args:
        shape: model sizes.
        block_length: DLLM block length ``L`` (engine option ``dllm_block_length``).
        seed: weight seed; ``None`` draws a fresh one (kept in ``TinySDAR.seed``).
        hf_overrides: applied to the HF config like ``PytorchEngineConfig.hf_overrides``
            (e.g. FOCUS options).
        model_cls: build this class instead of the module-map lookup (e.g. the upstream
            ``SDARForCausalLM`` while the plugin has registered its own).
    """
    if seed is None:
        seed = secrets.randbits(31)  # torch's default RNG starts from a fixed seed every process
    hf_config = tiny_sdar_hf_config(shape)
    model_config = ModelConfig.from_hf_config(hf_config, dtype='float32', device_type='cpu')
    if hf_overrides:
        override_hf_config(model_config.hf_config, hf_overrides)
    # Upstream's SDAR config builder hard-codes 151669, which does not fit the tiny vocab.
    model_config.dllm_mask_token = hf_config.mask_token_id

    misc_config = MiscConfig(dllm_config=DLLMConfig(block_length=block_length))
    strategy_factory = build_strategy_factory(model_config, misc_config)
    build_ctx = BuildModelContext(dllm_config=misc_config.dllm_config,
                                  strategy_factory=strategy_factory,
                                  max_batch_size=64)
    weights = random_sdar_weights(model_config.hf_config, torch.Generator().manual_seed(seed))
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
    return TinySDAR(model=model, hf_config=model_config.hf_config, model_config=model_config, weights=weights,
                    seed=seed)
