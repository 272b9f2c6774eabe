"""Upstream's n-gram repetition filter, safe for requests without a stop word.

When a request's output repeats an n-gram (``repetition_ngram_size``), upstream ends it by masking
every token but its first stop word. It reads that stop word from column 0 of the batch's stop-word
table, which is -1 for a request with none (``ignore_eos`` and no ``stop_token_ids``); gathering at
-1 raises, on the GPU as a device assert, and the whole batch's step fails. A request without a stop
word cannot be ended this way, so it is left as it is: its threshold is set out of reach and its
gather index made valid; every other row goes through upstream's function unchanged.
"""
import functools

import torch


def safe_for_missing_stop_words(upstream):
    """Wrap upstream's ``_filter_repetition_ngram_(scores, stop_words, generated_ids, n, threshold, max_n,
    max_ngram_window_size)``."""

    @functools.wraps(upstream)
    def _filter_repetition_ngram_(scores, stop_words, generated_ids, n, threshold, max_n, max_ngram_window_size):
        if stop_words is not None and stop_words.numel() > 0:
            no_stop_word = stop_words[:, 0] < 0
            stop_words = stop_words.clamp(min=0)  # only column 0 is read, and only where a match is found
            threshold = torch.where(no_stop_word, torch.iinfo(torch.int32).max, threshold)
        return upstream(scores, stop_words, generated_ids, n, threshold, max_n, max_ngram_window_size)

    _filter_repetition_ngram_.__lmdeploy_focus_upstream__ = upstream
    return _filter_repetition_ngram_
