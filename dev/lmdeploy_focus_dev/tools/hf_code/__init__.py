"""Remote-code config modules copied into generated checkpoints (referenced by `auto_map`).

Each file here must stay self-contained (it is imported from the checkpoint directory by
transformers' dynamic-module loader, outside this package), so only `transformers` is imported.
"""
