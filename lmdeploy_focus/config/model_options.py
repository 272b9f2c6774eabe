"""FOCUS options as the engine process sees them on the resolved ModelConfig."""
from ..log import logger
from .options import OPTIONS_KEY, FocusOptions


def drop_focus_options_for_non_dllm(model_config) -> None:
    """FOCUS flags only mean something for DLLMs: warn and ignore them for other models."""
    hf_config = model_config.hf_config
    if model_config.model_paradigm == 'dllm' or getattr(hf_config, OPTIONS_KEY, None) is None:
        return
    options = FocusOptions.from_hf_config(hf_config)
    if not options.is_default:
        arch = (getattr(hf_config, 'architectures', None) or ['?'])[0]
        logger.warning(f'FOCUS options {options.to_dict()} are ignored: {arch} is not a diffusion LLM '
                       f'(model paradigm {model_config.model_paradigm!r}).')
    setattr(hf_config, OPTIONS_KEY, None)
