"""Load an HF SDAR checkpoint directory (config.json + safetensors) into :class:`SDARReference`.

    ckpt = load_sdar_checkpoint('/data/SDAR-8B-Chat-b32', dtype=torch.bfloat16, device='cuda')
    results = reference_generate(ckpt.model, prompts, block_length, ckpt.mask_token_id, ...)

The config goes through ``AutoConfig`` with remote code (the published checkpoints ship
``configuration_sdar.py``); when that fails (no remote code file, transformers refusing it) our own
copy of the SDAR config class is used, which is Qwen3's config under ``model_type='sdar'``.
Weights are read from every ``*.safetensors`` file the index names (or all of them when there is
no index), so the reference sees exactly the tensors the engine loads.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmdeploy_focus.config.model_facts import SDAR_MASK_TOKEN, mask_token_from_hf_config
from .sdar_model import SDARReference

INDEX_FILE = 'model.safetensors.index.json'
SDAR_MODEL_TYPES = ('sdar', )


@dataclass
class SDARCheckpoint:
    model: SDARReference
    hf_config: object
    mask_token_id: int
    path: str


def load_hf_config(path: str | Path):
    """The checkpoint's HF config; remote code first, our SDAR config class as the fallback."""
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=True)
    except Exception as remote_error:  # noqa: BLE001  any loader failure: try our own config class
        from ..tools.hf_code.configuration_sdar import SDARConfig
        try:
            return SDARConfig.from_pretrained(str(path))
        except Exception:  # noqa: BLE001
            raise remote_error from None


def safetensors_files(path: str | Path) -> list[Path]:
    """Weight files in load order: the index's files, else every ``*.safetensors``."""
    path = Path(path)
    index = path / INDEX_FILE
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())['weight_map'].values()))
        files = [path / n for n in names]
    else:
        files = sorted(path.glob('*.safetensors'))
    if not files:
        raise FileNotFoundError(f'{path}: no *.safetensors weights')
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f'{path}: {INDEX_FILE} names missing files {missing[:3]}')
    return files


def load_weights(path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = 'cpu',
                 tie_word_embeddings: bool = False) -> dict[str, torch.Tensor]:
    """HF-named tensors, cast to ``dtype`` (None keeps the stored dtype) on ``device``."""
    from safetensors.torch import load_file
    weights = {}
    for file in safetensors_files(path):
        for name, tensor in load_file(str(file), device=str(device)).items():
            weights[name] = tensor if dtype is None else tensor.to(dtype)
    # tied checkpoints (e.g. SDAR-1.7B) store no lm_head; the reference reads it by name
    if 'lm_head.weight' not in weights and tie_word_embeddings:
        weights['lm_head.weight'] = weights['model.embed_tokens.weight']
    return weights


def load_sdar_checkpoint(path: str | Path, dtype: torch.dtype | None = None,
                         device: str | torch.device = 'cpu') -> SDARCheckpoint:
    """The reference SDAR of a checkpoint directory, with its mask token (default 151669)."""
    hf_config = load_hf_config(path)
    model_type = getattr(hf_config, 'model_type', None)
    if model_type not in SDAR_MODEL_TYPES:
        raise ValueError(f'{path}: the reference model implements SDAR (model_type "sdar"), got {model_type!r}')
    weights = load_weights(path, dtype, device, bool(getattr(hf_config, 'tie_word_embeddings', False)))
    return SDARCheckpoint(model=SDARReference(weights, hf_config),
                          hf_config=hf_config,
                          mask_token_id=mask_token_from_hf_config(hf_config, SDAR_MASK_TOKEN),
                          path=str(path))
