"""Serving edge cases of delayed cache / FOCUS through the real engine (issue 3, deliverable 5).

* ``logic``: what an output must be (upstream's DLLM stop rule applied to a baseline trajectory),
  choosing mid-block lengths and stop tokens, staggered start schedules, comparison and summary;
  pure Python, tested on CPU (``tests/test_serving_edge_logic.py``);
* ``prompts``: the prompt sets (held-out tasks, KJV text, long prompts, shared-prefix prompts);
* ``engine_cases``: the cases against an in-process engine (GPU only).

Driver: ``checks/serving_edge_check.py``.
"""
