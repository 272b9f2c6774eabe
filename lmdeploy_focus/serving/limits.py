"""The model facts a request is validated against, read from an upstream ``AsyncEngine``."""
from ..config.model_facts import DLLM_ARCHS, mask_token_from_hf_config
from .validation import ModelLimits

_ATTR = '_lmdeploy_focus_limits'


def is_hybrid(role) -> bool:
    """A PyTorch engine role that is not prefill/decode-disaggregated (False when unknown: another backend)."""
    from lmdeploy.pytorch.disagg.config import EngineRole
    return role == EngineRole.Hybrid


def model_limits(arch: str | None, hf_config, session_len: int | None, tokenizer_vocab: int | None,
                 hybrid: bool = False, logprobs: bool | None = None) -> ModelLimits:
    vocab = getattr(hf_config, 'vocab_size', None)
    if vocab is None and hf_config is not None and hasattr(hf_config, 'get_text_config'):
        vocab = getattr(hf_config.get_text_config(), 'vocab_size', None)
    vocab = vocab if vocab is not None else tokenizer_vocab
    mask = None
    if arch in DLLM_ARCHS:
        mask = mask_token_from_hf_config(hf_config, DLLM_ARCHS[arch][0])
    return ModelLimits(vocab_size=vocab, session_len=session_len, mask_token=mask, hybrid=hybrid, logprobs=logprobs)


def engine_limits(async_engine) -> ModelLimits:
    """Cached on the engine (its model does not change)."""
    limits = getattr(async_engine, _ATTR, None)
    if limits is None:
        tokenizer = getattr(async_engine, 'tokenizer', None)
        backend_config = getattr(async_engine, 'backend_config', None)
        # as upstream's api_server: an engine config with the field and no mode computes no logprobs
        logprobs = (backend_config.logprobs_mode is not None) if hasattr(backend_config, 'logprobs_mode') else None
        limits = model_limits(getattr(async_engine, 'arch', None), getattr(async_engine, 'hf_cfg', None),
                              getattr(async_engine, 'session_len', None), getattr(tokenizer, 'vocab_size', None),
                              hybrid=is_hybrid(getattr(backend_config, 'role', None)), logprobs=logprobs)
        setattr(async_engine, _ATTR, limits)
    return limits
