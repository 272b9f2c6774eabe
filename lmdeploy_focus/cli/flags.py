"""The FOCUS command-line flags, added to ``lmdeploy serve api_server`` and ``lmdeploy chat``."""
import argparse

from ..config.options import (COMMIT_MODES, DEFAULT_COMMIT_MODE, DEFAULT_FOCUS_ALPHA, DEFAULT_FOCUS_POLICY,
                              FOCUS_POLICIES, OPTIONS_KEY, FocusOptions)
from ..log import log_once



def float_ge_1(text: str) -> float:
    """argparse type: a clean usage error instead of a traceback for a bad alpha."""
    try:
        return FocusOptions(focus_alpha=float(text)).focus_alpha
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_focus_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('FOCUS (lmdeploy-focus)', 'Delayed cache and FOCUS token eviction for DLLMs')
    group.add_argument('--dllm-enable-delayed-cache',
                       action='store_true',
                       default=False,
                       help='Each denoising step processes only the block positions whose KV is not yet stable')
    group.add_argument('--dllm-enable-focus',
                       '--focus',
                       dest='dllm_enable_focus',
                       action='store_true',
                       default=False,
                       help='FOCUS: evict masked tokens unlikely to be decoded after layer 1 '
                       '(implies --dllm-enable-delayed-cache)')
    group.add_argument('--dllm-focus-alpha',
                       type=float_ge_1,
                       default=DEFAULT_FOCUS_ALPHA,
                       help='FOCUS safety margin (>= 1.0) over the expected number of decodable tokens per step')
    group.add_argument('--dllm-delayed-cache-commit',
                       choices=COMMIT_MODES,
                       default=DEFAULT_COMMIT_MODE,
                       help='How a decoded block becomes history under delayed cache: exact = one full pass '
                       'over the block (history KV never stale), fast = only its uncached positions')
    group.add_argument('--dllm-focus-policy',
                       choices=FOCUS_POLICIES,
                       default=DEFAULT_FOCUS_POLICY,
                       help='Which masked tokens FOCUS keeps: importance (delta between layers 0 and 1, the paper) '
                       'or leftmost (the leftmost ones; ablations and cost measurements)')
    group.add_argument('--dllm-focus-shadow',
                       action='store_true',
                       default=False,
                       help='Compute the FOCUS selection without evicting; with --dllm-track, report how many '
                       'decoded tokens had been selected (implies --dllm-enable-focus)')
    group.add_argument('--dllm-track',
                       action='store_true',
                       default=False,
                       help='Collect per-request DLLM statistics (processed tokens, denoising steps)')


def options_from_args(args: argparse.Namespace) -> FocusOptions:
    """Validated options (ValueError on a bad alpha) from parsed arguments."""
    return FocusOptions(enable_delayed_cache=args.dllm_enable_delayed_cache,
                        enable_focus=args.dllm_enable_focus,
                        focus_alpha=args.dllm_focus_alpha,
                        track=args.dllm_track,
                        delayed_cache_commit=args.dllm_delayed_cache_commit,
                        focus_policy=args.dllm_focus_policy,
                        focus_shadow=args.dllm_focus_shadow).resolved()


def track_for_metrics(args: argparse.Namespace) -> bool:
    """api_server: with delayed cache or FOCUS on and the metrics system on (upstream's default; off with
    ``--disable-metrics``), ``--dllm-track`` is implied, so that ``/metrics`` carries the
    ``lmdeploy:dllm_*`` series (:mod:`lmdeploy_focus.serving.metrics`). Returns whether it turned it on."""
    if args.dllm_track or getattr(args, 'disable_metrics', True):
        return False
    if not options_from_args(args).uses_sparse_decode:
        return False
    args.dllm_track = True
    log_once('Delayed cache / FOCUS with metrics on: --dllm-track enabled for the lmdeploy:dllm_* series on '
             '/metrics (--disable-metrics serves without both).')
    return True


def fold_into_hf_overrides(args: argparse.Namespace) -> None:
    """Put non-default FOCUS options into ``args.hf_overrides`` (the channel to the engine)."""
    options = options_from_args(args)
    if options.is_default:
        return
    overrides = dict(getattr(args, 'hf_overrides', None) or {})
    overrides[OPTIONS_KEY] = options.to_dict()
    args.hf_overrides = overrides

