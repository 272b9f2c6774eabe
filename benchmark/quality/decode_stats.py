"""Decode statistics of a cell: raw counters (``lmdeploy_focus.stats.read_run_stats``'s keys) -> ratios.

Counters, summed over the cell's decode steps (prefill excluded):
decode_steps (sequence-steps), generated_tokens (tokens unmasked), processed_tokens (rows through
layer 0), deep_tokens (rows through layers >= 2, i.e. after FOCUS eviction), candidates /
kept_candidates (masked rows of the processing sets / those FOCUS kept), shadow_decoded,
shadow_selected_decoded, shadow_random_expected (steps where a selection was computed: decoded
tokens, those the selection held, and what a random subset of the same size would hold).

Ratios (None where a counter is missing or its denominator is 0):
generated_per_step, steps_per_request (denoising steps per request), processed_per_generated
(deep_tokens / generated_tokens: the compute per decoded token that FOCUS cuts),
layer0_processed_per_generated, kept_fraction, shadow_recall (selected / decoded) and random_recall
(the same for a random selection: FOCUS helps where shadow_recall > random_recall).
"""
STAT_KEYS = ('decode_steps', 'generated_tokens', 'processed_tokens', 'deep_tokens', 'candidates', 'kept_candidates',
             'shadow_decoded', 'shadow_selected_decoded', 'shadow_random_expected')
RATIO_KEYS = ('generated_per_step', 'steps_per_request', 'processed_per_generated', 'layer0_processed_per_generated',
              'kept_fraction', 'shadow_recall', 'random_recall')
# ratio -> the counter whose absence makes it None (a missing counter reads as 0 in derived_metrics, which would
# turn "not measured" into a ratio of 0); tests/test_single_sources.py ties these names to run_stats.KEYS
RATIO_NEEDS = {'processed_per_generated': 'deep_tokens', 'layer0_processed_per_generated': 'processed_tokens',
               'kept_fraction': 'kept_candidates', 'shadow_recall': 'shadow_selected_decoded',
               'random_recall': 'shadow_random_expected', 'generated_per_step': 'generated_tokens'}


def read_engine_stats(reset: bool = True) -> tuple[dict | None, str | None]:
    """``(counters, None)``, or ``(None, why not)`` when this process has no DLLM run statistics."""
    try:
        from lmdeploy_focus.stats import read_run_stats
    except ImportError as e:
        return None, f'lmdeploy_focus.stats is not available in this build ({e})'
    stats = read_run_stats(reset=reset)
    if stats is None:
        return None, 'no DLLM run statistics in this process (the engine collected none)'
    return dict(stats), None


def derive(stats: dict | None, num_requests: int) -> dict:
    """The report's ratios (``lmdeploy_focus.stats.derived_metrics`` plus steps per request); every key
    of :data:`RATIO_KEYS` is present, None where a counter is missing."""
    from lmdeploy_focus.stats import derived_metrics
    stats = stats or {}
    complete = {key: float(stats.get(key) or 0) for key in STAT_KEYS}
    ratios = derived_metrics(complete)
    for name, needs in RATIO_NEEDS.items():
        if stats.get(needs) is None:
            ratios[name] = None
    steps = stats.get('decode_steps')
    ratios['steps_per_request'] = steps / num_requests if steps is not None and num_requests else None
    return {key: ratios[key] for key in RATIO_KEYS}
