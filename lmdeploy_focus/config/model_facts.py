"""Model facts the DLLM engine needs that upstream does not read from the checkpoint."""
import re
from pathlib import PurePath

from ..log import logger

SDAR_MASK_TOKEN = 151669
LLADA2_MASK_TOKEN = 156895
LLADA2_DEFAULT_BLOCK_LENGTH = 32

# SDAR checkpoints are published per block length: JetLM/SDAR-8B-Chat-b32. A hub cache path keeps
# the repo name in a parent folder (models--JetLM--SDAR-8B-Chat-b32/snapshots/<hash>).
_BLOCK_SUFFIX = re.compile(r'-b(\d+)$')


def mask_token_from_hf_config(hf_config, default: int) -> int:
    mask_token = getattr(hf_config, 'mask_token_id', None)
    return default if mask_token is None else int(mask_token)


def block_length_from_path(model_path: str | None) -> int | None:
    """The N of a ``-b<N>`` suffix in the model path (nearest path component first)."""
    if not model_path:
        return None
    for part in reversed(PurePath(str(model_path).rstrip('/')).parts):
        match = _BLOCK_SUFFIX.search(part)
        if match and int(match.group(1)) > 0:
            block_length = int(match.group(1))
            logger.info(f'dllm block length {block_length} taken from the model path ({part}).')
            return block_length
    return None


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
