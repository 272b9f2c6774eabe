"""FOCUS options as the engine process sees them on the resolved ModelConfig."""
from ..log import logger
from .compat import check_no_speculative_decoding
from .options import OPTIONS_KEY, FocusOptions


def settle_focus_options(model_config, spec_method: str | None = None) -> None:
    """FOCUS flags only mean something for DLLMs decoding their own blocks: refuse them beside speculative decoding,
    warn and ignore them for other models."""
    hf_config = model_config.hf_config
    if getattr(hf_config, OPTIONS_KEY, None) is None or (model_config.model_paradigm == 'dllm' and spec_method is None):
        return  # a DLLM's options are checked where the engine reads them
    options = FocusOptions.from_hf_config(hf_config)
    check_no_speculative_decoding(options.resolved(), spec_method)  # also checked on the command lines, earlier
    if model_config.model_paradigm == 'dllm':
        return
    if not options.is_default:
        arch = (getattr(hf_config, 'architectures', None) or ['?'])[0]
        logger.warning(f'FOCUS options {options.to_dict()} are ignored: {arch} is not a diffusion LLM '
                       f'(model paradigm {model_config.model_paradigm!r}).')
    setattr(hf_config, OPTIONS_KEY, None)
