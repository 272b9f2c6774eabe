"""Engine settings that delayed cache / FOCUS cannot run with, reported with the fix."""


def check_block_fits_page(block_length: int, page_size: int) -> None:
    """The sparse KV fill writes a whole diffusion block inside one KV page."""
    if block_length > page_size or page_size % block_length != 0:
        raise ValueError(
            f'dllm_block_length={block_length} does not fit the KV page (block_size={page_size}): delayed cache '
            f'and FOCUS need the page size to be a multiple of the block length. Set block_size '
            f'(--cache-block-seq-len) to a multiple of {block_length} (for example {block_length * max(1, 64 // block_length)}).')


def check_engine_settings(*, quant_policy: int, tp: int, block_size: int, dllm_block_length: int | None,
                          device_type: str, enable_prefix_caching: bool = False,
                          delayed_cache_commit: str = 'exact') -> None:
    """Validate the engine settings that delayed cache / FOCUS depend on."""
    if enable_prefix_caching and delayed_cache_commit == 'fast':
        # Prompt blocks (prefill) are exact either way, but a finished block committed the 'fast' way
        # keeps KV computed while its right neighbours were masks; the prefix cache would hand that
        # approximate KV to later requests (multi-turn chats) as if it were a clean prefix.
        raise ValueError("enable_prefix_caching with dllm_delayed_cache_commit='fast': committed blocks carry "
                         "approximate KV that the prefix cache would share with other requests. Use "
                         "dllm_delayed_cache_commit='exact' (--dllm-delayed-cache-commit exact) or disable "
                         "prefix caching.")
    if int(quant_policy) != 0:
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus do not support KV-cache quantisation '
                         f'(quant_policy={int(quant_policy)}): set quant_policy=0 (drop --quant-policy).')
    if tp > 1:
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus do not support tensor parallelism yet '
                         f'(tp={tp}): set tp=1 (--tp 1).')
    if device_type != 'cuda':
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus need CUDA (their kernels are Triton '
                         f'CUDA kernels), got device_type={device_type!r}: use device_type="cuda".')
    if dllm_block_length is not None:
        check_block_fits_page(dllm_block_length, block_size)
