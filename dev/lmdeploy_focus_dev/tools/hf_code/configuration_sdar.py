"""Config class for SDAR block-diffusion checkpoints (`model_type: "sdar"`).

Written by lmdeploy-focus into random-weight SDAR checkpoints, where `config.json`'s `auto_map`
points `AutoConfig` at `configuration_sdar.SDARConfig`, as in the published SDAR checkpoints.
SDAR is Qwen3 for inference (same weights and shapes; block-causal attention and a mask token
are runtime choices), so the config is Qwen3's with its own model_type. Extra keys such as
`mask_token_id` pass through as plain attributes.

No modeling file ships with these checkpoints: LMDeploy never imports a checkpoint's modeling
code; it reads this config and builds its own SDAR model (lmdeploy.pytorch.models.sdar).
"""

from transformers.models.qwen3.configuration_qwen3 import Qwen3Config


class SDARConfig(Qwen3Config):
    model_type = 'sdar'


__all__ = ['SDARConfig']
