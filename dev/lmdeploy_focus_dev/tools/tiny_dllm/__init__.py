"""A tiny SDAR-architecture block-diffusion LLM, trained from scratch offline (issue 6).

Random weights never reach a confidence threshold and their attention carries no signal, so
FOCUS's decisions and output quality need a trained model. This package trains one in minutes on
one GPU, on KJV Bible text (Debian ``bible-kjv-text``, public domain) mixed with synthetic
exact-match tasks, and exports it as an HF-format SDAR checkpoint the plugin serves.

Modules, one concept each:

* ``tokenizer``: byte-level vocabulary with ChatML markers and the mask token;
* ``tasks``: synthetic multi-part tasks (copy, reverse, sort, lookup, pattern, addition);
* ``data``: training sequences (task + text) in the layout inference sees;
* ``sizes``: named model shapes and their training defaults;
* ``model``: the Qwen3-style SDAR module with HF weight names;
* ``objective``: block-diffusion attention masks, noising and the 1/t-weighted loss;
* ``train``: the optimisation loop;
* ``export`` / ``model_card``: checkpoint writing and loading, README;
* ``evaluate``: exact match and decoding dynamics through the reference decode loop;
* ``prepare_kjv``: turns the Debian package into the text files training reads.

Entry point: ``python -m lmdeploy_focus_dev.tools.train_tiny_dllm``.
"""
