"""Named shapes of the tiny SDAR model and their training defaults.

``5m`` is the stand-in model of the docs (hidden 256, 6 layers, ~4.9 M parameters, ~10 MB bf16);
``25m`` is a deeper and wider one (~25 M, ~50 MB). Head dims are 64, which the project's Triton
kernels support. ``micro`` exists for CPU tests and smoke runs only.

Default step counts are unmeasured guesses at what fills ~6.5 minutes of an H100 at batch 256
(5m: ~60 ms a step, 25m: ~110 ms; eager bf16, 224-token sequences doubled by the block-diffusion
layout). ``--steps auto`` measures instead and records the count it chose (``train.plan_steps``);
replace these defaults with the recorded counts once a GPU run has measured them.
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
                                  intermediate_size=768), steps=6000, batch_size=256, lr=1e-3),
    '25m': SizeDefaults(ModelShape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                                   intermediate_size=1536), steps=3500, batch_size=256, lr=6e-4),
    'micro': SizeDefaults(ModelShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                                     intermediate_size=128), steps=20, batch_size=8, lr=3e-3),
}


def parameter_count(shape: ModelShape) -> int:
    h, q, kv = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * shape.intermediate_size + 2 * shape.head_dim + 2 * h
    return shape.num_layers * per_layer + 2 * shape.vocab_size * h + h
