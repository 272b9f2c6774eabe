"""Building blocks of ``benchmark/profile_throughput.py`` (our implementation, not LMDeploy's).

datasets     read ShareGPT / GSM8K / MATH files or HF ids into conversations
prompts      conversations -> tokenised prompts (chat template, fork's filters), seeded sampling,
             synthetic random token-id prompts
repeat_guard the fork's repeated-block early stop
metrics      per-request timings -> throughput and latency statistics
engine_runner in-process PyTorch engine, one async worker per concurrency slot
report       table, JSON file, CSV row
"""
