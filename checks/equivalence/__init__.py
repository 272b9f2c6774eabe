"""Step-by-step equivalence of DLLM decoding runs (issue 3): engine recordings of
``LMDEPLOY_FOCUS_RECORD_STEPS`` against each other or against the CPU reference loop.

* ``sequences``: recordings / reference step records → per-sequence lists of :class:`SeqStep`;
* ``tolerances``: dtype spacing, the near-tie factor and the logits tolerance;
* ``decisions``: why two unmasking decisions on identical inputs differ, and by how much;
* ``compare_steps``: the per-sequence comparison, the summary and the command line;
* ``report``: the short text table.
"""
