"""The decode step's per-sequence state and its ragged row layout (spec §2.1–2.2, §3.4–3.8), as device
tensors: what the strategies above keep between steps and the sparse step below consumes.

``processing_set``: which block positions a step forwards and where they sit in the ragged rows;
``delayed_cache_state``: which positions are still uncached; ``focus_state``: FOCUS progress and the
running decoded average; ``focus_step``: FOCUS's settings (``FocusConfig``)."""
