"""lmdeploy-focus development package: what the engine plugin (``lmdeploy_focus``) does not ship.

* ``reference``: the oracle, plain-torch models and the reference decode loop written from the spec;
* ``testing``: the CPU harness (upstream model modules on CPU, fake serving, the step recorder);
* ``tools``: random-weight checkpoints, the offline Qwen3 tokenizer, the tiny-model trainer.

It imports the runtime; the runtime never imports it (``tests/test_import_direction.py``). The step
recorder reaches the engine through the runtime's debug-hook entry point (``lmdeploy_focus.debug_hooks``).
"""
