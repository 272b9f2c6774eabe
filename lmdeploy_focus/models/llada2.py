"""LLaDA2.0 (``LLaDA2MoeModelLM``, ``model_type='llada2_moe'``) for LMDeploy's PyTorch engine.

Upstream 0.18 has no LLaDA2. For inference it is SDAR's decoder with two differences, so it is
built from upstream's SDAR modules (attention with fused QKV and per-head Q/K RMSNorm, decoder
layer, model forward, block-causal prefill) plus upstream's DeepSeek-V3 MoE block:

* RoPE on the first ``partial_rotary_factor * head_dim`` features of each head (upstream's rotary
  embedding reads the factor from the config; its CUDA rotary kernel leaves the rest untouched);
* from layer ``first_k_dense_replace`` on, a MoE MLP: fp32 router, sigmoid scores, a per-expert
  bias used for *selection only*, group-limited top-k (groups ranked by the sum of their two best
  scores), unbiased scores of the chosen experts renormalised and scaled by
  ``routed_scaling_factor``, plus shared experts. That is DeepSeek-V3's ``noaux_tc`` routing, so
  upstream's ``DeepseekV2MoE`` runs it from a config view with DeepSeek's field names.

Because the module tree matches SDAR's (``model.embed_tokens``, ``layers[i].self_attn`` ...),
delayed cache and FOCUS attach through the same mixin and decoder-parts adapter as SDAR.
Checkpoint names (``word_embeddings``, ``attention.query_key_value``, ``attention.dense``,
``mlp.gate.expert_bias``, per-expert projections) are mapped in :meth:`LLaDA2MoeModelLM.load_weights`;
a checkpoint tensor with no parameter is skipped with a warning, a parameter left unfilled is an error.
"""
import re
import weakref
from collections import Counter
from collections.abc import Iterable
from types import SimpleNamespace

import torch
from lmdeploy.pytorch.models.deepseek_v2 import DeepseekV2MoE
from lmdeploy.pytorch.models.sdar import SDARAttention, SDARDecoderLayer, SDARForCausalLM, SDARMLP, SDARModel
from lmdeploy.pytorch.nn import RMSNorm, build_rotary_embedding_from_config
from lmdeploy.pytorch.nn.linear import build_rowwise_linear
from lmdeploy.pytorch.weight_loader.model_weight_loader import load_weight
from torch import nn

from ..log import logger
from .sdar import DelayedCacheDLLMMixin

ROUTER_FP32 = ('fp32', 'float32')


def check_supported(config) -> None:
    """Refuse LLaDA2 variants this module does not implement (published LLaDA2.0 has none of them)."""
    unsupported = []
    if getattr(config, 'use_qkv_bias', False) or getattr(config, 'use_bias', False):
        unsupported.append('attention biases (use_qkv_bias / use_bias)')
    if getattr(config, 'score_function', 'sigmoid') not in ('sigmoid', 'softmax'):
        unsupported.append(f'score_function={config.score_function!r}')
    if getattr(config, 'hidden_act', 'silu') != 'silu':
        unsupported.append(f'hidden_act={config.hidden_act!r}')
    if getattr(config, 'tie_word_embeddings', False):
        unsupported.append('tied word embeddings')
    if unsupported:
        raise NotImplementedError(f'LLaDA2 checkpoint uses {", ".join(unsupported)}, which lmdeploy-focus '
                                  'does not implement')


def deepseek_moe_view(config) -> SimpleNamespace:
    """The LLaDA2 MoE settings under the field names upstream's ``DeepseekV2MoE`` reads."""
    num_experts = config.num_experts
    n_group = getattr(config, 'n_group', None) or 1
    router_dtype = getattr(config, 'router_dtype', 'fp32')
    return SimpleNamespace(
        hidden_size=config.hidden_size,
        moe_intermediate_size=config.moe_intermediate_size,
        n_routed_experts=num_experts,
        n_shared_experts=getattr(config, 'num_shared_experts', None) or None,
        num_experts_per_tok=config.num_experts_per_tok,
        norm_topk_prob=config.norm_topk_prob,
        routed_scaling_factor=config.routed_scaling_factor,
        scoring_func=getattr(config, 'score_function', 'sigmoid'),
        topk_method='noaux_tc',
        n_group=n_group,
        topk_group=getattr(config, 'topk_group', None) or n_group,
        # router logits in fp32 like the checkpoint's reference code (upstream: bf16 GEMM, fp32 output)
        moe_router_dtype='float32' if router_dtype is None or router_dtype in ROUTER_FP32 else router_dtype,
        model_type='llada2_moe',
        quantization_config=getattr(config, 'quantization_config', None),
    )


class LLaDA2Attention(SDARAttention):
    """SDAR's attention; LLaDA2 names it ``attention`` with ``query_key_value`` / ``dense`` (mapped at load)."""

    def __init__(self, config, dtype=None, device=None):
        super().__init__(config, dtype=dtype, device=device)
        if not getattr(config, 'use_qk_norm', True):
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()


class LLaDA2DecoderLayer(SDARDecoderLayer):
    """SDAR's decoder layer (its forward) with a dense MLP in the first layers and MoE after."""

    def __init__(self, config, layer_idx: int, dtype=None, device=None):
        nn.Module.__init__(self)  # SDARDecoderLayer.__init__ would allocate a dense MLP in every layer
        self.layer_idx = layer_idx
        self.self_attn = LLaDA2Attention(config, dtype=dtype, device=device)
        if layer_idx < getattr(config, 'first_k_dense_replace', 0):
            self.mlp = SDARMLP(config, dtype=dtype, device=device)
        else:
            self.mlp = DeepseekV2MoE(deepseek_moe_view(config), layer_idx, dtype=dtype, device=device)
            if not getattr(config, 'moe_router_enable_expert_bias', True):
                nn.init.zeros_(self.mlp.gate.e_score_correction_bias)  # no bias in the checkpoint
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)


class LLaDA2Model(SDARModel):
    """SDAR's model forward over LLaDA2 decoder layers."""

    def __init__(self, config, dtype=None, device=None):
        nn.Module.__init__(self)
        self.padding_idx = None
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.layers = nn.ModuleList([
            LLaDA2DecoderLayer(config, idx, dtype=dtype, device=device) for idx in range(config.num_hidden_layers)
        ])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, device=device)
        self.rotary_emb = build_rotary_embedding_from_config(config)  # partial_rotary_factor honoured


def selection_bias(expert_bias: torch.Tensor) -> torch.Tensor:
    """The checkpoint's expert bias, shifted so that its smallest entry is 0.

    Upstream's group-limited routing (CPU default and the CUDA ``fused_noaux_tc_routing`` kernel)
    fills the experts of non-chosen groups with 0, where LLaDA2 / DeepSeek-V3 exclude them (-inf).
    The two agree only while every eligible biased score ``sigmoid + bias`` is positive; a
    non-negative bias guarantees that. A constant shift changes no group ranking (top-2 sums move
    by the same amount), no expert ranking, and no weight (weights use the unbiased scores).
    """
    return expert_bias - expert_bias.min()


# checkpoint name -> (our name, shard id of a stacked parameter or None)
_RENAMES = [
    ('model.word_embeddings.', 'model.embed_tokens.', None),
    ('.attention.query_layernorm.', '.self_attn.q_norm.', None),
    ('.attention.key_layernorm.', '.self_attn.k_norm.', None),
    ('.attention.dense.', '.self_attn.o_proj.', None),
    ('.mlp.gate.expert_bias', '.mlp.gate.e_score_correction_bias', None),
    ('.gate_proj.', '.gate_up_proj.', 0),
    ('.up_proj.', '.gate_up_proj.', 1),
]
_EXPERT = re.compile(r'\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$')
# models a first load filled completely: a later load into one is a weight update (kept out of the model's own
# attributes, which must stay upstream SDAR's)
_FILLED = weakref.WeakSet()


class LLaDA2MoeModelLM(SDARForCausalLM):
    """LLaDA2.0 MoE block-diffusion LM (inherits SDAR's forward, logits and input preparation)."""

    def __init__(self, config, ctx_mgr, dtype=None, device=None):
        nn.Module.__init__(self)
        check_supported(config)
        self.config = config
        self.ctx_mgr = ctx_mgr
        # what SDAR's attention reads; LLaDA2.0 has no attention bias and no sliding window
        config.dllm_block_length = ctx_mgr.build_ctx.dllm_config.block_length
        config.attention_bias = False
        config.sliding_window = None
        self.model = LLaDA2Model(config, dtype=dtype, device=device)
        self.lm_head = build_rowwise_linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype,
                                            device=device)

    def _load_qkv(self, name: str, weight: torch.Tensor, params: dict) -> None:
        cfg = self.config
        head_dim = getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads
        q_rows, kv_rows = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
        if weight.size(0) != q_rows + 2 * kv_rows:
            raise ValueError(f'{name}: {weight.size(0)} rows, expected {q_rows} + 2 x {kv_rows} (q, k, v)')
        param = params[name.replace('.attention.query_key_value.', '.self_attn.qkv_proj.')]
        for shard, part in zip('qkv', weight.split([q_rows, kv_rows, kv_rows], 0)):
            load_weight(param, part, shard_id=shard)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        """Load HF LLaDA2 tensors (upstream calls this once per shard file).

        A tensor with no parameter here is skipped and reported; a parameter that no tensor of the first load filled
        is an error, raised once loading is over (:meth:`process_weights_after_loading`).
        """
        params = dict(self.named_parameters())
        pieces = self.__dict__.setdefault('_loaded_pieces', Counter())
        skipped = self.__dict__.setdefault('_skipped_tensors', [])
        for name, weight in weights:
            if 'rotary_emb.inv_freq' in name:
                continue
            if '.attention.query_key_value.' in name:
                self._load_qkv(name, weight, params)
                pieces[name.replace('.attention.query_key_value.', '.self_attn.qkv_proj.')] += 3
                continue
            expert = _EXPERT.search(name)
            if expert is not None:
                expert_id, proj = int(expert.group(1)), expert.group(2)
                target = name[:expert.start()] + ('.mlp.experts.down.weight' if proj == 'down' else
                                                  '.mlp.experts.gate_up.weight')
                shard = proj
            else:
                target, shard = name, None
                for old, new, shard_id in _RENAMES:
                    if old in target:
                        target, shard = target.replace(old, new), shard_id
            param = params.get(target)
            if param is None:
                skipped.append(name)
                continue
            if target.endswith('.mlp.gate.e_score_correction_bias'):
                weight = selection_bias(weight.float())
            if expert is not None:
                load_weight(param, weight, expert_id=expert_id, shard_id=shard)
            elif shard is None:
                load_weight(param, weight)
            else:
                load_weight(param, weight, shard_id=shard)
            pieces[target] += 1

    def _expected_pieces(self, name: str) -> int:
        """How many checkpoint tensors fill parameter ``name``."""
        if name.endswith('.qkv_proj.weight'):
            return 3
        if name.endswith('.experts.gate_up.weight'):
            return 2 * self.config.num_experts
        if name.endswith('.experts.down.weight'):
            return self.config.num_experts
        if name.endswith('.gate_up_proj.weight'):
            return 2
        return 1

    def process_weights_after_loading(self):
        """Report skipped tensors; refuse to run with parameters the first load did not fill."""
        pieces = self.__dict__.pop('_loaded_pieces', None)
        skipped = self.__dict__.pop('_skipped_tensors', [])
        if pieces is None:
            return  # weights did not come through load_weights (e.g. a dummy-weight engine)
        if skipped:
            logger.warning(f'LLaDA2: {len(skipped)} checkpoint tensor(s) have no parameter in the model and were '
                           f'skipped, e.g. {skipped[:3]}')
        # a checkpoint without expert bias leaves the (zero-initialised) selection bias as it is
        bias_optional = not getattr(self.config, 'moe_router_enable_expert_bias', True)
        missing = [name for name, _ in self.named_parameters()
                   if pieces[name] < self._expected_pieces(name)
                   and not (bias_optional and name.endswith('.e_score_correction_bias'))]
        if missing and self not in _FILLED:
            raise RuntimeError(f'LLaDA2 checkpoint did not fill {len(missing)} parameter(s), e.g. {missing[:3]}: '
                               'a tensor name this model does not know, or an incomplete checkpoint')
        # once filled, a later load is a weight update (upstream's update_params, IPC or distributed updates send
        # the tensors that changed, then run this hook): partial by design
        _FILLED.add(self)


class DelayedCacheLLaDA2MoeModelLM(DelayedCacheDLLMMixin, LLaDA2MoeModelLM):
    """LLaDA2 with token-level delayed cache and FOCUS (upstream's model path when both are off)."""
