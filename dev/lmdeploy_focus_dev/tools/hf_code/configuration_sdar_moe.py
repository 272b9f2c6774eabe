"""Config class for SDAR-MoE block-diffusion checkpoints (`model_type: "sdar_moe"`).

Written by lmdeploy-focus into random-weight SDAR-MoE checkpoints, where `config.json`'s `auto_map`
points `AutoConfig` at `configuration_sdar_moe.SDARMoeConfig`. SDAR-MoE has Qwen3-MoE's weights and
shapes (block-causal attention and a mask token are runtime choices), so the config is Qwen3-MoE's with
its own model_type. Extra keys such as `mask_token_id` pass through as plain attributes.

No modeling file ships with these checkpoints: LMDeploy builds its own model (lmdeploy.pytorch.models.sdar_moe).
"""

from transformers.models.qwen3_moe.configuration_qwen3_moe import Qwen3MoeConfig


class SDARMoeConfig(Qwen3MoeConfig):
    model_type = 'sdar_moe'


__all__ = ['SDARMoeConfig']
