"""``python -m lmdeploy_focus.calibrate MODEL [--tasks FILE]``: measure which FOCUS setting (policy, α) a model
tolerates, instead of guessing (issue 19).

Design. The command (:mod:`.cli`) plans a grid (:mod:`.grid`): one run with delayed cache alone (the
no-eviction baseline), then for every α and both policies one run in shadow mode (the selection is
computed, nothing evicted: the recall of the decoded tokens by the kept set, and what a random subset of
the same size would have recalled) and one run evicting (kept fraction, tokens per step, accuracy, rows per
generated token). Every run is summarised by the counters of ``dllm_track``
(``strategies.dllm.run_stats.KEYS``), whichever backend ran it. :func:`.grid.recommend` picks the cheapest
(policy, α) whose shadow recall meets the target, or none ("do not enable FOCUS on this model").

Backends (:mod:`.backends`). ``engine``, in this package: LMDeploy's PyTorch engine with the plugin (needs
CUDA). ``reference``, the pure-torch reference decode loop (CPU or CUDA), lives in the development package
(the oracle is development code, and the runtime never imports it): that package registers its backend
under the entry-point group ``lmdeploy_focus.calibrate_backends``, and this command looks it up there by
name. Without the development package, asking for it fails with the install command
(``pip install '.[dev]'``). The task file format (:mod:`.task_file`, :mod:`.scorers`) is the one of
``benchmark/eval_quality.py``, which imports it from here, as it does the input checks both tools run before
decoding (:mod:`.checks`) and the rule that resolves ``--backend auto`` (:func:`.backends.resolve`).
"""
