"""Engine settings that delayed cache / FOCUS cannot run with, reported with the fix."""
import logging

from ..log import log_once
from .env_switch import env_switch

ALLOW_TP_ENV = 'LMDEPLOY_FOCUS_ALLOW_TP'  # '1': accept tp > 1 (unverified on GPUs, see check_tensor_parallel)

# upstream's UnmaskingStrategy members, lower case (what dllm_unmasking_strategy takes; a test ties the two), for the
# command lines that offer them as choices without importing the engine
UNMASKING_STRATEGIES = ('low_confidence_dynamic', 'low_confidence_static', 'sequential')

# FOCUS's importance kernel holds a block's query tile and three key tiles (L x d each) in shared memory per program
# (kernels/cuda/focus_importance.py, where the sizes are measured). Tiles of at most 32 KiB fit a Hopper GPU (sm_90,
# 227 KiB a block); GPUs with less (sm_86 / sm_89: 99 KiB) fit blocks of 64. With 16-bit heads of 128, the engine's,
# that is blocks up to 128; the published DLLMs use blocks of 4 to 64.
MAX_FOCUS_TILE_BYTES = 32 * 1024
# the config's early check, before the model is known: every supported model has 16-bit heads of 128 (the strategy
# factory checks the model's own heads with check_focus_tiles)
MAX_FOCUS_BLOCK_LENGTH = MAX_FOCUS_TILE_BYTES // (128 * 2)


def focus_tile_bytes(block_length: int, head_dim: int, itemsize: int) -> int:
    """Bytes of one importance-kernel tile: the block and the head dim rounded up to powers of two (>= 16 rows)."""
    return max(16, 1 << (block_length - 1).bit_length()) * (1 << (head_dim - 1).bit_length()) * itemsize

MIN_PAGE = 16  # upstream: the KV page (block_size / kernel_block_size) is a power of two >= 16


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_block_length(block_length) -> None:
    """A diffusion block holds at least one token: 0 or a negative length is a typo, not a setting."""
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f'dllm_block_length must be a positive integer, got {block_length!r}: pass the model\'s '
                         f'block length (SDAR: the N of -b<N>, e.g. --dllm-block-length 32) or leave it unset '
                         f'to take it from the model.')


def check_unmasking_strategy(strategy) -> None:
    """Upstream reads ``dllm_unmasking_strategy`` only when it builds the engine (``None`` was an AttributeError
    there): a name its ``UnmaskingStrategy.from_str`` takes, checked with the config."""
    from lmdeploy.pytorch.config import UnmaskingStrategy
    try:
        UnmaskingStrategy.from_str(strategy)
    except (AttributeError, ValueError):
        names = ', '.join(member.name.lower() for member in UnmaskingStrategy)
        raise ValueError(f'dllm_unmasking_strategy must be one of {names}, got {strategy!r}') from None


def check_prefill_holds_a_block(max_prefill_token_num, block_length) -> None:
    """Upstream caps a DLLM engine's ``max_batch_size`` at ``max_prefill_token_num // block length``: below one block
    that is 0, which its engine checker answers by ending the process ("max_batch_size should be greater than 0",
    naming a value the user did not set) and which, with the checks off, admits no request at all."""
    if isinstance(max_prefill_token_num, int) and block_length and max_prefill_token_num < block_length:
        raise ValueError(f'max_prefill_token_num ({max_prefill_token_num}) is below the block length ({block_length}): '
                         f'a diffusion engine batches whole blocks (at most max_prefill_token_num // block length '
                         f'sequences), so it could run none; raise --max-prefill-token-num to at least the block length '
                         f'times the batch you want (e.g. {block_length * 256} for 256 sequences)')


def check_unmasking_settings(denoising_steps, confidence_threshold) -> None:
    """Upstream's unmasker divides the block by ``denoising_steps`` (0: ZeroDivisionError inside the first
    decode step, which ends the engine loop) and unmasks where the confidence reaches the threshold (NaN:
    never, so every request hangs)."""
    if denoising_steps is not None and (isinstance(denoising_steps, bool) or not isinstance(denoising_steps, int)
                                        or denoising_steps < 1):
        raise ValueError(f'dllm_denoising_steps must be a positive integer, got {denoising_steps!r}: the steps a '
                         f'block takes under static / sequential unmasking (block length / steps tokens a step; '
                         f'e.g. --dllm-denoising-steps 8 for 4 a step at block 32), or leave it unset (the block '
                         f'length: one token a step).')
    threshold = confidence_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f'dllm_confidence_threshold must be a number in [0, 1], got {threshold!r}: the probability '
                         f'a masked token needs to be unmasked under dynamic unmasking (e.g. '
                         f'--dllm-confidence-threshold 0.9; 1.0: one token a step).')


def check_full_attention(sliding_window) -> None:
    """The delayed-cache / FOCUS step attends over a sequence's whole history with its own KV fill and attention,
    not upstream's windowed kernels, while upstream's block manager would free the pages a window leaves
    behind: a model config that turns a sliding window on cannot run with it."""
    windows = sliding_window if isinstance(sliding_window, (list, tuple)) else [sliding_window]
    if any(w is not None and w > 0 for w in windows):
        # upstream takes the window from the checkpoint's config.json before applying --hf-overrides, so an
        # override cannot turn it off: the file is where it is set
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus do not support sliding-window attention, '
                         f'and the model config turns it on (sliding_window={sliding_window}, use_sliding_window '
                         f'true or unset). If the model attends to its whole context (SDAR and LLaDA2.0 do), set '
                         f'"use_sliding_window": false in its config.json (LMDeploy reads the window from that file '
                         f'before --hf-overrides apply); otherwise serve it without --focus.')


def check_block_fits_page(block_length: int, page_size: int) -> None:
    """Delayed cache and FOCUS run only where a KV page holds whole diffusion blocks.

    Why: upstream's DLLM engine strategy (0.18, ``DLLMEngineStrategy.get_prealloc_size`` / ``get_num_loops``) counts
    a decoding sequence's preallocation and decode loops in ``block_size // dllm_block_length`` whole blocks, none
    when the block is longer than the page; and the plugin's kernels, graphs and GPU checks were built and run only
    with the page a multiple of the block length (the kernels themselves look up the page per row, so a block may
    straddle pages there). Upstream requires the page (``block_size``) to be a power of two >= 16, so a block fits
    only when its length is a power of two too; the fix named in the error is one upstream accepts.
    """
    check_block_length(block_length)
    if not is_power_of_two(block_length):
        lower = 1 << (block_length.bit_length() - 1)
        raise ValueError(
            f'dllm_block_length={block_length} cannot fit a KV page: delayed cache and FOCUS run only where the page '
            f'(block_size, a power of two >= {MIN_PAGE}) is a multiple of the block length, so the block '
            f'length must be a power of two: use dllm_block_length={lower} or {lower * 2} '
            f'(--dllm-block-length), the one the model was trained with.')
    if block_length > page_size or page_size % block_length != 0:
        raise ValueError(
            f'dllm_block_length={block_length} does not fit the KV page (block_size={page_size}): delayed cache '
            f'and FOCUS run only where the page size is a multiple of the block length. Set '
            f'block_size={max(block_length, MIN_PAGE)} (--cache-block-seq-len {max(block_length, MIN_PAGE)}).')


def check_focus_block_length(block_length: int) -> None:
    """FOCUS (eviction or shadow mode) runs blocks up to :data:`MAX_FOCUS_BLOCK_LENGTH`; delayed cache alone runs
    any block a page holds."""
    if block_length > MAX_FOCUS_BLOCK_LENGTH:
        raise ValueError(f'dllm_enable_focus with dllm_block_length={block_length}: FOCUS runs blocks of at most '
                         f'{MAX_FOCUS_BLOCK_LENGTH} tokens (its importance kernel holds a whole block in GPU shared '
                         f'memory); use the model\'s trained block length (SDAR: the N of -b<N>) or drop --focus '
                         f'(delayed cache alone, --dllm-enable-delayed-cache, runs this block length)')


def check_focus_tiles(block_length: int, head_dim: int, dtype) -> None:
    """The model's heads at this block length fit FOCUS's importance kernel (checked where the model is known)."""
    if focus_tile_bytes(block_length, head_dim, dtype.itemsize) > MAX_FOCUS_TILE_BYTES:
        raise ValueError(f'dllm_enable_focus with dllm_block_length={block_length} and this model\'s {head_dim}-dim '
                         f'{dtype} heads: FOCUS\'s importance kernel holds a block of query and key rows in GPU '
                         f'shared memory, which these overflow; use a shorter block (the model\'s trained one) or drop '
                         f'--focus (delayed cache alone, --dllm-enable-delayed-cache, runs it)')


def check_engine_settings(*, quant_policy: int, tp: int, block_size: int, dllm_block_length: int | None,
                          device_type: str, enable_prefix_caching: bool = False,
                          delayed_cache_commit: str = 'exact', dp: int = 1, ep: int = 1, focus: bool = False) -> None:
    """Validate the engine settings that delayed cache / FOCUS depend on."""
    if dp > 1 or ep > 1:
        # DP ranks run dummy decode forwards while others decode, and upstream's DP / EP layers size
        # their collectives from per-step metadata the step graphs would freeze at warm-up.
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus do not support data or expert parallelism '
                         f'(dp={dp}, ep={ep}): set dp=1 and ep=1 (--dp 1 --ep 1).')
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
    check_tensor_parallel(tp)
    if device_type != 'cuda':
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus need CUDA (their kernels are Triton '
                         f'CUDA kernels), got device_type={device_type!r}: use device_type="cuda".')
    if dllm_block_length is not None:
        check_block_fits_page(dllm_block_length, block_size)
        if focus:
            check_focus_block_length(dllm_block_length)


def check_tensor_parallel(tp: int) -> None:
    """TP > 1 is refused unless ``LMDEPLOY_FOCUS_ALLOW_TP=1``, and then accepted with a warning.

    The FOCUS importance delta is all-reduced over the attention TP ranks and that reduction plus
    the selection are tested on CPU (gloo), but the delayed-cache / FOCUS decode step has never run
    with tp > 1 on GPUs (sparse KV fill and ragged attention on sharded heads, the captured graphs'
    collectives, row-parallel all-reduces over the kept rows).
    """
    if tp <= 1:
        return
    if not env_switch(ALLOW_TP_ENV):
        raise ValueError(f'dllm_enable_delayed_cache / dllm_enable_focus with tensor parallelism (tp={tp}) have never '
                         f'run on GPUs (only the importance all-reduce and the selection are tested, on CPU): set '
                         f'tp=1 (--tp 1), or set {ALLOW_TP_ENV}=1 to try it unverified (with '
                         f'LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1 to check that every rank keeps the same rows).')
    log_once(f'{ALLOW_TP_ENV}=1: delayed cache / FOCUS with tp={tp} is unverified (never run on GPUs); '
             f'LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1 checks every step that the TP ranks keep the same rows.',
             logging.WARNING)


def check_no_speculative_decoding(options, method) -> None:
    """Delayed cache / FOCUS (``options``, resolved) beside speculative decoding (``method``, None: off): eagle3
    keeps the DLLM paradigm, so its agent would drive the sparse decode step (never built for a draft); dflash makes
    the DLLM target autoregressive, and FOCUS would be dropped blaming the model."""
    if method is not None and options.uses_sparse_decode:
        raise ValueError(f'delayed cache / FOCUS do not run with speculative decoding (method {method!r}): drop '
                         f'--speculative-algorithm / --speculative-draft-model (speculative_config), or the --focus / '
                         f'--dllm-enable-delayed-cache flags')
