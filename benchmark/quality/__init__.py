"""Building blocks of ``benchmark/eval_quality.py`` (quality and decoding statistics per arm).

task_file          JSONL task file -> tasks (one-line errors naming file:line)
scorers            the scorer registry (exact, exact_strip, numeric, prefix_chars:N, contains)
arms               arm name -> engine-config kwargs; shared run settings
prompting          tasks -> token-id prompts (chat template), output ids -> text
outcome            what a backend returns per (arm, threshold) cell
decode_stats       DLLM run statistics (engine or reference) -> the report's ratios
engine_backend     tasks through the in-process PyTorch engine, one engine per (arm, threshold)
reference_backend  tasks through the pure-torch reference decode loop (CPU or CUDA)
report             per-cell summaries, the printed table, JSON and markdown
Reuses ``throughput`` (prompts, engine runner, environment) from profile_throughput.
"""
