"""Config class for LLaDA2 MoE diffusion checkpoints (`model_type: "llada2_moe"`).

Written by lmdeploy-focus into random-weight LLaDA2.0-mini-shaped checkpoints so that
`AutoConfig.from_pretrained(dir, trust_remote_code=True)` works offline; `config.json`'s `auto_map`
names `configuration_llada2_moe.LLaDA2MoeConfig` as the published checkpoint does. It only
stores the fields (defaults: LLaDA2.0-mini); every key in config.json becomes an attribute.

The tokenizer written next to these weights is the Qwen3 one: its ids fit LLaDA2's 157184-entry
vocabulary, but it is not LLaDA2's tokenizer (that one is not available offline), so text in
and out is meaningless; use it for token-id throughput runs only.

No modeling file ships with these checkpoints: LMDeploy never imports a checkpoint's modeling code.
"""

from transformers import PretrainedConfig


class LLaDA2MoeConfig(PretrainedConfig):
    model_type = 'llada2_moe'

    def __init__(self,
                 vocab_size=157184,
                 hidden_size=2048,
                 intermediate_size=5120,
                 num_hidden_layers=20,
                 num_attention_heads=16,
                 num_key_value_heads=4,
                 head_dim=128,
                 hidden_act='silu',
                 rms_norm_eps=1e-6,
                 max_position_embeddings=32768,
                 rope_theta=600000.0,
                 partial_rotary_factor=0.5,
                 use_qk_norm=True,
                 use_qkv_bias=False,
                 use_bias=False,
                 num_experts=256,
                 num_shared_experts=1,
                 num_experts_per_tok=8,
                 moe_intermediate_size=512,
                 first_k_dense_replace=1,
                 n_group=8,
                 topk_group=4,
                 score_function='sigmoid',
                 moe_router_enable_expert_bias=True,
                 routed_scaling_factor=2.5,
                 norm_topk_prob=True,
                 router_dtype='fp32',
                 mask_token_id=156895,
                 tie_word_embeddings=False,
                 **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        self.use_qk_norm = use_qk_norm
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.n_group = n_group
        self.topk_group = topk_group
        self.score_function = score_function
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.router_dtype = router_dtype
        self.mask_token_id = mask_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


__all__ = ['LLaDA2MoeConfig']
