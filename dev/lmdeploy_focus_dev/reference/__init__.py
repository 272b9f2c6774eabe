"""The oracle: plain-torch models (SDAR, SDAR-MoE, LLaDA2) and the reference decode loop, written from
``focus-spec.md`` independently of the runtime's strategy code (``dllm_decode``, ``focus_spec``)."""
