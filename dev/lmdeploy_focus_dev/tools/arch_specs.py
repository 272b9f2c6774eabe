"""Shapes of the models we write random-weight checkpoints for (one row per arch).

Values come from the published checkpoints (see shared/reference/models-and-data.md). The weight
names each `family` implies live in weight_layouts.py, the config.json fields in hf_config_files.py.
"""

from dataclasses import dataclass

QWEN3_VOCAB = 151936  # padded embedding rows of Qwen3 / SDAR (tokenizer uses 151670 of them)
QWEN3_BOS = 151643  # <|endoftext|>
QWEN3_IM_END = 151645
SDAR_MASK = 151669  # <|MASK|>

GB = 10**9  # shard sizes are decimal, like HF's "5GB"


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    num_experts_per_tok: int
    num_shared_experts: int
    moe_intermediate_size: int
    first_k_dense_replace: int  # layers [0, k) keep a dense MLP
    n_group: int
    topk_group: int
    routed_scaling_factor: float


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # 'qwen3' (SDAR and Qwen3 weight names), 'qwen3_moe' (SDAR-MoE) or 'llada2_moe'
    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    rope_theta: float
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int | None
    generation_eos_token_ids: tuple[int, ...]
    mask_token_id: int | None = None
    partial_rotary_factor: float = 1.0
    moe: MoESpec | None = None
    max_shard_bytes: int = 4 * GB


def _sdar(name: str, hidden: int, layers: int, heads: int, intermediate: int, tied: bool = False,
          **overrides) -> ArchSpec:
    fields = dict(name=name, family='qwen3', architecture='SDARForCausalLM', model_type='sdar',
                  hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=128,
                  intermediate_size=intermediate, vocab_size=QWEN3_VOCAB, tie_word_embeddings=tied,
                  rope_theta=1e6, max_position_embeddings=32768, bos_token_id=QWEN3_BOS,
                  eos_token_id=QWEN3_BOS, pad_token_id=QWEN3_BOS,
                  generation_eos_token_ids=(QWEN3_IM_END, QWEN3_BOS), mask_token_id=SDAR_MASK)
    fields.update(overrides)
    return ArchSpec(**fields)


def _sdar_moe(name: str, layers: int, **overrides) -> ArchSpec:
    """SDAR-MoE (``SDARMoeForCausalLM``): Qwen3-MoE weights under model_type ``sdar_moe``. The default shape is
    Qwen3-30B-A3B's, which SDAR-30B-A3B is trained from (the published SDAR-MoE config is not available offline)."""
    moe = MoESpec(num_experts=128, num_experts_per_tok=8, num_shared_experts=0, moe_intermediate_size=768,
                  first_k_dense_replace=0, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    fields = dict(family='qwen3_moe', architecture='SDARMoeForCausalLM', model_type='sdar_moe', hidden=2048,
                  layers=layers, heads=32, intermediate=6144, num_kv_heads=4, moe=moe)
    fields.update(overrides)
    return _sdar(name, **fields)


ARCH_SPECS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        _sdar('sdar-8b', hidden=4096, layers=36, heads=32, intermediate=12288),
        _sdar('sdar-4b', hidden=2560, layers=36, heads=32, intermediate=9728),
        # tying unverified for SDAR-1.7B; Qwen3-1.7B (whose shape it has) ties, so we do too
        _sdar('sdar-1.7b', hidden=2048, layers=28, heads=16, intermediate=6144, tied=True),
        # CPU-test size; the vocab stays real so the real tokenizer's ids (and <|MASK|>) fit.
        # Small shards on purpose: tests then cover a multi-file index like the big models'.
        _sdar('tiny-sdar', hidden=64, layers=2, heads=4, intermediate=128, num_kv_heads=2, head_dim=16,
              max_shard_bytes=16 * 10**6),
        # SDAR-30B-A3B's shape: 30.5 B parameters, 61 GB in bf16, more than the lent GPU machines' disk holds
        _sdar_moe('sdar-30b-a3b', layers=48),
        # the same layers, half as many (31 GB): per-layer costs of the real shape, for machines with 64 GiB of disk
        _sdar_moe('sdar-30b-a3b-l24', layers=24),
        # CPU-test size (dense layer 0 as mlp_only_layers, MoE after), real vocabulary, small shards
        _sdar_moe('tiny-sdar-moe', layers=2, hidden=64, heads=4, intermediate=128, num_kv_heads=2, head_dim=16,
                  moe=MoESpec(num_experts=4, num_experts_per_tok=2, num_shared_experts=0, moe_intermediate_size=32,
                              first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0),
                  max_shard_bytes=16 * 10**6),
        ArchSpec(name='qwen3-8b', family='qwen3', architecture='Qwen3ForCausalLM', model_type='qwen3',
                 hidden_size=4096, num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128,
                 intermediate_size=12288, vocab_size=QWEN3_VOCAB, tie_word_embeddings=False,
                 rope_theta=1e6, max_position_embeddings=40960, bos_token_id=QWEN3_BOS,
                 eos_token_id=QWEN3_IM_END, pad_token_id=None,
                 generation_eos_token_ids=(QWEN3_IM_END, QWEN3_BOS)),
        ArchSpec(name='llada2-mini', family='llada2_moe', architecture='LLaDA2MoeModelLM',
                 model_type='llada2_moe', hidden_size=2048, num_layers=20, num_heads=16, num_kv_heads=4,
                 head_dim=128, intermediate_size=5120, vocab_size=157184, tie_word_embeddings=False,
                 rope_theta=600000.0, max_position_embeddings=32768, bos_token_id=None,
                 eos_token_id=156892, pad_token_id=156892, generation_eos_token_ids=(156892, ),
                 mask_token_id=156895, partial_rotary_factor=0.5,
                 moe=MoESpec(num_experts=256, num_experts_per_tok=8, num_shared_experts=1,
                             moe_intermediate_size=512, first_k_dense_replace=1, n_group=8, topk_group=4,
                             routed_scaling_factor=2.5)),
    )
}


def get_arch_spec(name: str) -> ArchSpec:
    try:
        return ARCH_SPECS[name]
    except KeyError:
        raise ValueError(f'unknown arch {name!r}; choose from {sorted(ARCH_SPECS)}') from None
