"""Named shapes of the tiny SDAR model and their training defaults.

``5m`` is the stand-in model of the docs (hidden 256, 6 layers, ~4.9 M parameters, ~10 MB bf16);
``25m`` is a deeper and wider one (~25 M, ~50 MB). Head dims are 64, which the project's Triton
kernels support. ``micro`` exists for CPU tests and smoke runs only.

Default step counts are what ``--steps auto`` measured on an H100 (eager bf16, batch 256, 224-token
sequences doubled by the block-diffusion layout): 5m ran 4,200 steps in 5.7 min (~80 ms a step),
25m ~290 steps a minute (~0.21 s a step; 1,200 in 4.1 min, so ~1,900 in a 6.5-minute budget).
``--steps auto`` measures instead and records the count it chose (``train.plan_steps``), which
``train_log.json`` keeps for an exact rerun.
"""
from dataclasses import dataclass

from .tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int = VOCAB_SIZE
    rope_theta: float = 10000.0  # short sequences: the usual base, not Qwen3's 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096


@dataclass(frozen=True)
class SizeDefaults:
    shape: ModelShape
    steps: int
    batch_size: int
    lr: float


SIZES: dict[str, SizeDefaults] = {
    '5m': SizeDefaults(ModelShape(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, head_dim=64,
                                  intermediate_size=768), steps=4200, batch_size=256, lr=1e-3),
    '25m': SizeDefaults(ModelShape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                                   intermediate_size=1536), steps=1900, batch_size=256, lr=6e-4),
    'micro': SizeDefaults(ModelShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                     intermediate_size=128), steps=20, batch_size=8, lr=3e-3),
}


def parameter_count(shape: ModelShape) -> int:
    h, q, kv = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * shape.intermediate_size + 2 * shape.head_dim + 2 * h
    return shape.num_layers * per_layer + 2 * shape.vocab_size * h + h
