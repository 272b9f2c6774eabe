"""Model facts the DLLM engine needs that upstream does not read from the checkpoint."""
import json
import os
import re
from pathlib import PurePath

from ..log import logger
from .compat import is_power_of_two

SDAR_MASK_TOKEN = 151669
LLADA2_MASK_TOKEN = 156895
LLADA2_DEFAULT_BLOCK_LENGTH = 32
# the model types the engine decodes as DLLMs (upstream's SDAR builder, ours for LLaDA2: config/builders.py)
SDAR_MODEL_TYPES = ('sdar', 'sdar_moe')
LLADA2_MODEL_TYPE = 'llada2_moe'
DLLM_MODEL_TYPES = (*SDAR_MODEL_TYPES, LLADA2_MODEL_TYPE)
# the architectures the PyTorch engine runs as DLLMs -> (the mask token the family's builder falls back to, the
# plugin's model class for it: patch 6 maps the architecture to it)
DLLM_ARCHS = {
    'SDARForCausalLM': (SDAR_MASK_TOKEN, 'lmdeploy_focus.models.sdar.DelayedCacheSDARForCausalLM'),
    'SDARMoeForCausalLM': (SDAR_MASK_TOKEN, 'lmdeploy_focus.models.sdar.DelayedCacheSDARMoeForCausalLM'),
    # not in upstream 0.18 at all: our model (upstream SDAR + DeepSeek MoE modules)
    'LLaDA2MoeModelLM': (LLADA2_MASK_TOKEN, 'lmdeploy_focus.models.llada2.DelayedCacheLLaDA2MoeModelLM'),
}

# SDAR checkpoints are published per block length: JetLM/SDAR-8B-Chat-b32. A hub cache path keeps
# the repo name in a parent folder (models--JetLM--SDAR-8B-Chat-b32/snapshots/<hash>).
_BLOCK_SUFFIX = re.compile(r'-b(\d+)$')
# Only a block length a DLLM is trained with (a power of two; SDAR publishes 4..64): a folder such as
# checkpoint-b1000 is a training step, not a block length.
MAX_PATH_BLOCK_LENGTH = 256


def mask_token_from_hf_config(hf_config, default: int) -> int:
    mask_token = getattr(hf_config, 'mask_token_id', None)
    return default if mask_token is None else int(mask_token)


def _model_names(path: str) -> tuple[str, ...]:
    parts = PurePath(path.rstrip('/')).parts
    if len(parts) >= 3 and parts[-2] == 'snapshots' and parts[-3].startswith('models--'):
        return parts[-1], parts[-3]
    return tuple(parts[-1:])


def block_length_from_path(model_path: str | None) -> int | None:
    """The N of a ``-b<N>`` suffix of the model folder's name, or of the repo folder of a hub cache path
    (``models--ORG--NAME-b<N>/snapshots/<rev>``); other parent folders are not the model's name."""
    if not model_path:
        return None
    names = _model_names(str(model_path))
    if os.path.isdir(model_path):  # '.', '..' or a symlink given for the folder: its resolved name too
        names += _model_names(os.path.realpath(model_path))
    for part in names:
        match = _BLOCK_SUFFIX.search(part)
        if not match:
            continue
        block_length = int(match.group(1))
        if not (1 < block_length <= MAX_PATH_BLOCK_LENGTH and is_power_of_two(block_length)):
            logger.warning(f'the model path ends in -b{block_length} ({part}), which is not a block length '
                           f'(a power of two up to {MAX_PATH_BLOCK_LENGTH}); ignored: pass --dllm-block-length.')
            return None
        logger.info(f'dllm block length {block_length} taken from the model path ({part}).')
        return block_length
    return None


def local_config(model_path: str) -> dict | None:
    """The checkpoint folder's ``config.json`` (None: none readable there, e.g. a hub id, or not a JSON object)."""
    try:
        with open(os.path.join(model_path, 'config.json'), encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def local_model_type(model_path: str) -> str | None:
    """``model_type`` of the checkpoint folder ``model_path`` (None: no readable config.json there, e.g. a hub id)."""
    model_type = (local_config(model_path) or {}).get('model_type')
    return model_type if isinstance(model_type, str) else None


def local_mask_token(config: dict) -> int:
    """The mask token of a checkpoint's ``config.json``, as its family's config builder reads it."""
    mask_token = config.get('mask_token_id')
    if mask_token is not None:
        return int(mask_token)
    return LLADA2_MASK_TOKEN if config.get('model_type') == LLADA2_MODEL_TYPE else SDAR_MASK_TOKEN


def model_block_length(model_type: str | None, model_path: str | None) -> int | None:
    """The block length the engine reads from the model when none is configured: an SDAR's ``-b<N>`` folder name,
    LLaDA2's default; None for other models (or an SDAR path without one: upstream's default applies)."""
    if model_type in SDAR_MODEL_TYPES:
        return block_length_from_path(model_path)
    return LLADA2_DEFAULT_BLOCK_LENGTH if model_type == LLADA2_MODEL_TYPE else None


def ensure_rope_parameters(hf_config) -> None:
    """Fill ``rope_parameters`` from ``rope_theta`` / ``rope_scaling`` when it is missing.

    Without ``--trust-remote-code`` transformers 5 loads an SDAR config.json as a generic config that
    keeps ``rope_theta`` but leaves ``rope_parameters`` unset, and LMDeploy's SDAR model reads the latter.
    """
    if getattr(hf_config, 'rope_parameters', None) is not None:
        return
    scaling = dict(getattr(hf_config, 'rope_scaling', None) or {})
    rope_type = scaling.pop('rope_type', scaling.pop('type', 'default'))
    hf_config.rope_parameters = {'rope_type': rope_type, 'rope_theta': getattr(hf_config, 'rope_theta', 10000.0),
                                 **scaling}
