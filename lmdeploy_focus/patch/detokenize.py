"""Patch 20: ``HuggingFaceTokenizer.detokenize_incrementally`` holds back an unfinished character only (see package
docstring)."""


def apply(tokenizer) -> None:
    from ..serving.detokenize import holds_back_only_the_partial_character

    cls = tokenizer.HuggingFaceTokenizer
    upstream = cls.detokenize_incrementally
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is None:
        cls.detokenize_incrementally = holds_back_only_the_partial_character(upstream, tokenizer.DetokenizeState)
