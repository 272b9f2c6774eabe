"""config.json / generation_config.json contents for an ArchSpec, shaped like the published ones.

Remote-code checkpoints (SDAR, LLaDA2) carry `auto_map` and our own config module from
`hf_code/`; which module belongs to which model_type is listed in REMOTE_CONFIG_MODULES.
"""

from .arch_specs import ArchSpec

# model_type -> (file copied into the checkpoint, auto_map entries)
REMOTE_CONFIG_MODULES: dict[str, tuple[str, dict[str, str]]] = {
    'sdar': ('configuration_sdar.py', {
        'AutoConfig': 'configuration_sdar.SDARConfig',
        'AutoModelForCausalLM': 'modeling_sdar.SDARForCausalLM',
    }),
    'sdar_moe': ('configuration_sdar_moe.py', {
        'AutoConfig': 'configuration_sdar_moe.SDARMoeConfig',
        'AutoModelForCausalLM': 'modeling_sdar_moe.SDARMoeForCausalLM',
    }),
    'llada2_moe': ('configuration_llada2_moe.py', {
        'AutoConfig': 'configuration_llada2_moe.LLaDA2MoeConfig',
        'AutoModel': 'modeling_llada2_moe.LLaDA2MoeModel',
        'AutoModelForCausalLM': 'modeling_llada2_moe.LLaDA2MoeModelLM',
    }),
}


def _token_ids(s: ArchSpec) -> dict:
    ids = {'bos_token_id': s.bos_token_id, 'eos_token_id': s.eos_token_id, 'pad_token_id': s.pad_token_id}
    return {key: value for key, value in ids.items() if value is not None}


def _qwen3_fields(s: ArchSpec) -> dict:
    return {
        'attention_bias': False,
        'attention_dropout': 0.0,
        'head_dim': s.head_dim,
        'hidden_act': 'silu',
        'hidden_size': s.hidden_size,
        'initializer_range': 0.02,
        'intermediate_size': s.intermediate_size,
        'max_position_embeddings': s.max_position_embeddings,
        'max_window_layers': s.num_layers,
        'num_attention_heads': s.num_heads,
        'num_hidden_layers': s.num_layers,
        'num_key_value_heads': s.num_kv_heads,
        'rms_norm_eps': 1e-6,
        'rope_scaling': None,
        'rope_theta': s.rope_theta,
        # transformers 5 reads RoPE settings from here; older versions from rope_theta
        'rope_parameters': {'rope_type': 'default', 'rope_theta': s.rope_theta},
        'sliding_window': None,
        'use_cache': True,
        'use_sliding_window': False,
    }


def _qwen3_moe_fields(s: ArchSpec) -> dict:
    moe = s.moe
    return {
        **_qwen3_fields(s),
        'decoder_sparse_step': 1,
        'mlp_only_layers': list(range(moe.first_k_dense_replace)),
        'moe_intermediate_size': moe.moe_intermediate_size,
        'norm_topk_prob': True,
        'num_experts': moe.num_experts,
        'num_experts_per_tok': moe.num_experts_per_tok,
        'output_router_logits': False,
        'router_aux_loss_coef': 0.001,
    }


def _llada2_fields(s: ArchSpec) -> dict:
    moe = s.moe
    return {
        'attention_dropout': 0.0,
        'first_k_dense_replace': moe.first_k_dense_replace,
        'head_dim': s.head_dim,
        'hidden_act': 'silu',
        'hidden_size': s.hidden_size,
        'initializer_range': 0.02,
        'intermediate_size': s.intermediate_size,
        'max_position_embeddings': s.max_position_embeddings,
        'max_window_layers': s.num_layers,
        'moe_intermediate_size': moe.moe_intermediate_size,
        'moe_router_enable_expert_bias': True,
        'n_group': moe.n_group,
        'norm_topk_prob': True,
        'num_attention_heads': s.num_heads,
        'num_experts': moe.num_experts,
        'num_experts_per_tok': moe.num_experts_per_tok,
        'num_hidden_layers': s.num_layers,
        'num_key_value_heads': s.num_kv_heads,
        'num_shared_experts': moe.num_shared_experts,
        'partial_rotary_factor': s.partial_rotary_factor,
        'rms_norm_eps': 1e-6,
        'rope_scaling': None,
        'rope_theta': s.rope_theta,
        'routed_scaling_factor': moe.routed_scaling_factor,
        'router_dtype': 'fp32',
        'score_function': 'sigmoid',
        'topk_group': moe.topk_group,
        'use_bias': False,
        'use_cache': True,
        'use_qk_norm': True,
        'use_qkv_bias': False,
    }


def config_json(s: ArchSpec, dtype: str = 'bfloat16') -> dict:
    fields = {'qwen3': _qwen3_fields, 'qwen3_moe': _qwen3_moe_fields, 'llada2_moe': _llada2_fields}[s.family](s)
    config = {'architectures': [s.architecture], 'model_type': s.model_type}
    if s.model_type in REMOTE_CONFIG_MODULES:
        config['auto_map'] = dict(REMOTE_CONFIG_MODULES[s.model_type][1])
    config.update(fields)
    config.update(_token_ids(s))
    if s.mask_token_id is not None:
        config['mask_token_id'] = s.mask_token_id
    config.update(tie_word_embeddings=s.tie_word_embeddings, torch_dtype=dtype, vocab_size=s.vocab_size)
    config['transformers_version'] = _transformers_version()
    return dict(sorted(config.items()))


def _transformers_version() -> str:
    # Published checkpoints record the version that wrote them; without it transformers 5 suspects a
    # Mistral tokenizer with a broken regex and warns on every load.
    import transformers
    return transformers.__version__


def generation_config_json(s: ArchSpec) -> dict:
    config = _token_ids(s)
    # LMDeploy stops on every id listed here (chat models end turns with <|im_end|>)
    eos = list(s.generation_eos_token_ids)
    config['eos_token_id'] = eos[0] if len(eos) == 1 else eos
    if s.pad_token_id is None and s.bos_token_id is not None:
        config['pad_token_id'] = s.bos_token_id  # Qwen3 pads with <|endoftext|>
    return config
