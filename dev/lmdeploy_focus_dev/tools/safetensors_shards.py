"""Planning of HF-style safetensors shards and their `model.safetensors.index.json`.

Tensors are packed in order, a new shard starting whenever the next tensor would overflow
`max_shard_bytes` (a single larger tensor gets a shard of its own), as HF's save_pretrained does.
Shard files are `model-0000i-of-0000N.safetensors`, or `model.safetensors` when there is one.
"""

from dataclasses import dataclass

import torch

from .weight_layouts import TensorSpec


def tensor_dtype(tensor: TensorSpec, default: torch.dtype) -> torch.dtype:
    return getattr(torch, tensor.dtype) if tensor.dtype else default


def tensor_nbytes(tensor: TensorSpec, default: torch.dtype) -> int:
    return tensor.numel * tensor_dtype(tensor, default).itemsize


@dataclass
class Shard:
    file_name: str
    tensors: list[TensorSpec]
    nbytes: int


def plan_shards(tensors: list[TensorSpec], dtype: torch.dtype, max_shard_bytes: int) -> list[Shard]:
    groups: list[list[TensorSpec]] = [[]]
    sizes = [0]
    for tensor in tensors:
        size = tensor_nbytes(tensor, dtype)
        if groups[-1] and sizes[-1] + size > max_shard_bytes:
            groups.append([])
            sizes.append(0)
        groups[-1].append(tensor)
        sizes[-1] += size
    count = len(groups)
    names = (['model.safetensors'] if count == 1 else
             [f'model-{i + 1:05d}-of-{count:05d}.safetensors' for i in range(count)])
    return [Shard(name, group, size) for name, group, size in zip(names, groups, sizes)]


def index_json(shards: list[Shard]) -> dict:
    """total_size is the tensor bytes (headers excluded), as HF writes it."""
    weight_map = {t.name: shard.file_name for shard in shards for t in shard.tensors}
    return {
        'metadata': {'total_size': sum(shard.nbytes for shard in shards)},
        'weight_map': dict(sorted(weight_map.items())),
    }
