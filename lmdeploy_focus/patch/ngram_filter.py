"""Patch 8: upstream's n-gram repetition filter, made safe for requests without a stop word."""


def apply(logits_process) -> None:
    from ..strategies.ngram_filter import safe_for_missing_stop_words

    upstream = logits_process._filter_repetition_ngram_
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is None:
        logits_process._filter_repetition_ngram_ = safe_for_missing_stop_words(upstream)
