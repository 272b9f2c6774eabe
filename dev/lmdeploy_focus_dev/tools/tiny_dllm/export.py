"""Write the trained model as an HF-format SDAR checkpoint the plugin serves.

Same on-disk format as ``tools.random_checkpoint`` (and reusing its helpers): config.json with
``architectures: SDARForCausalLM``, ``model_type: sdar``, ``auto_map`` to our
``configuration_sdar.py`` (copied in) and ``mask_token_id``; safetensors shards of at most 15 MiB
(committable) with ``model.safetensors.index.json``; generation_config.json; the byte-level
tokenizer files. The folder is named ``tiny-sdar-<size>-b<L>``: the plugin reads the block
length from a ``-b<N>`` path component. Reading back goes through ``reference.checkpoint``.
"""
import json
import shutil
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..arch_specs import ArchSpec
from ..hf_config_files import REMOTE_CONFIG_MODULES, config_json, generation_config_json
from ..safetensors_shards import index_json, plan_shards
from ..weight_layouts import tensor_specs
from .model import TinySDAR
from .sizes import ModelShape
from .tokenizer import EOS_ID, MASK_ID, PAD_ID, write_tokenizer_files

MAX_SHARD_BYTES = 15 * 2**20  # tensor bytes; with the header each file stays under 16 MiB


def checkpoint_name(size: str, block_length: int) -> str:
    return f'tiny-sdar-{size}-b{block_length}'


def arch_spec(shape: ModelShape, name: str) -> ArchSpec:
    # bos id = <|endoftext|> as in Qwen3/SDAR (LMDeploy reads it; the tokenizer never adds a bos)
    return ArchSpec(name=name, family='qwen3', architecture='SDARForCausalLM', model_type='sdar',
                    hidden_size=shape.hidden_size, num_layers=shape.num_layers, num_heads=shape.num_heads,
                    num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
                    intermediate_size=shape.intermediate_size, vocab_size=shape.vocab_size,
                    tie_word_embeddings=False, rope_theta=shape.rope_theta,
                    max_position_embeddings=shape.max_position_embeddings, bos_token_id=PAD_ID, eos_token_id=EOS_ID,
                    pad_token_id=PAD_ID, generation_eos_token_ids=(EOS_ID, PAD_ID), mask_token_id=MASK_ID,
                    max_shard_bytes=MAX_SHARD_BYTES)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + '\n', encoding='utf-8')


def export_checkpoint(model: TinySDAR, out_dir: str | Path, dtype: str = 'bfloat16') -> Path:
    """Write ``model`` into ``out_dir`` (created; old weight files there are replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob('*.safetensors')) + list(out.glob('*.safetensors.index.json')):
        stale.unlink()
    spec = arch_spec(model.shape, out.name)
    torch_dtype = getattr(torch, dtype)
    state = {name: t.detach().to('cpu', torch_dtype).contiguous() for name, t in model.state_dict().items()}
    specs = tensor_specs(spec)
    expected = {t.name: t.shape for t in specs}
    actual = {name: tuple(t.shape) for name, t in state.items()}
    if expected != actual:
        raise RuntimeError(f'weights do not match the SDAR layout: {sorted(set(expected) ^ set(actual))[:5]}')

    shards = plan_shards(specs, torch_dtype, spec.max_shard_bytes)
    for shard in shards:
        path = out / shard.file_name
        save_file({t.name: state[t.name] for t in shard.tensors}, str(path), metadata={'format': 'pt'})
        path.chmod(0o644)  # safetensors writes owner-only files
    _write_json(out / 'model.safetensors.index.json', index_json(shards))
    _write_json(out / 'config.json', config_json(spec, dtype))
    _write_json(out / 'generation_config.json', generation_config_json(spec))
    module_file = REMOTE_CONFIG_MODULES['sdar'][0]
    shutil.copyfile(str(resources.files('lmdeploy_focus_dev.tools.hf_code') / module_file), out / module_file)
    write_tokenizer_files(out)
    return out
