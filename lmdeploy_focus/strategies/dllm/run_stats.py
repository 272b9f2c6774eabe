"""DLLM decode statistics of a run (``dllm_track``), accumulated on the device without host syncs.

Counted per decode step (prefill excluded), summed over the batch:

* ``decode_steps``: sequence-steps (each running sequence in each denoising step);
* ``generated_tokens``: tokens unmasked (MASKED → UNMASKED);
* ``processed_tokens``: rows through layer 0 and layer 1's QKV projection and K/V write (the whole
  block without delayed cache);
* ``deep_tokens``: rows through layer 1's attention and MLP and layers ≥ 2 (after FOCUS eviction; the
  LM head then runs on those still masked, ``kept_candidates``);
* ``candidates`` / ``kept_candidates``: masked rows of the processing sets / those FOCUS kept;
* ``shadow_decoded``, ``shadow_selected_decoded``, ``shadow_random_expected``: over sequences whose
  candidates outnumber their target (the only ones where a selection matters), decoded tokens,
  decoded tokens the selection had picked, and the expected number a uniformly random subset of
  the same size would have picked (Σ |decoded|·|selected|/|candidates|); with ``--dllm-focus-alpha auto``
  over the sequences in their shadow step;
* ``auto_shadow_steps`` / ``auto_fallback_steps`` (``--dllm-focus-alpha auto``): sequence-steps run in
  shadow mode, and sequence-steps that evicted nothing because the controller had not qualified the
  selection (probation at start-up) or had fallen back;
* ``stock_steps``: sequence-steps run as upstream's stock step (``--dllm-stock-step-rows``: small batches), which
  count the whole block as processed and deep and no FOCUS candidates.

Each step's counts are built per sequence first (:func:`per_sequence_counts`, ``float32 [B, K]``):
the run totals are their column sums, and the rows also travel to the host with the step's outputs
for the per-request statistics (:mod:`.request_stats`). Reading the totals
(:func:`lmdeploy_focus.stats.read_run_stats`) is the only sync.
"""
import threading
import weakref

import torch

KEYS = ('decode_steps', 'generated_tokens', 'processed_tokens', 'deep_tokens', 'candidates', 'kept_candidates',
        'shadow_decoded', 'shadow_selected_decoded', 'shadow_random_expected', 'auto_shadow_steps',
        'auto_fallback_steps', 'stock_steps')

_LIVE = weakref.WeakSet()
_LOCK = threading.Lock()


class RunStats:

    def __init__(self):
        self._totals: torch.Tensor | None = None  # float64 [len(KEYS)] on the step's device
        self._fed = False
        # the engine's thread adds, a reader's thread (pipeline() users, metrics) reads and resets: each swaps the
        # totals under this lock (kernel launches only; the read waits for the device after releasing it)
        self._lock = threading.Lock()

    def add(self, **values) -> None:
        """Add per-step counts (0-d tensors or numbers) under the names of ``KEYS``."""
        unknown = set(values) - set(KEYS)
        if unknown:
            raise KeyError(f'unknown run statistics {sorted(unknown)}')
        device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), None)

        def as_tensor(value):
            # a fill kernel, not a host-to-device copy: nothing here waits for the GPU
            if isinstance(value, torch.Tensor):
                return value.to(torch.float64).reshape(())
            return torch.full((), float(value), dtype=torch.float64, device=device)

        self._accumulate(torch.stack([as_tensor(values.get(key, 0)) for key in KEYS]))

    def add_rows(self, rows: torch.Tensor) -> None:
        """Add a step's per-sequence counts (``[B, len(KEYS)]``, see :func:`per_sequence_counts`)."""
        self._accumulate(rows.sum(dim=0, dtype=torch.float64))

    def _accumulate(self, row: torch.Tensor) -> None:
        if not self._fed:
            # listed for readers once it counts something: the engine process builds a strategy factory (and so one
            # of these) that never sees a step when the model runs in worker processes (TP > 1), and reading it gave
            # zeros where "no tracking engine in this process" (None) is the truth
            self._fed = True
            with _LOCK:
                _LIVE.add(self)
        with self._lock:  # a new tensor each time: a reader's snapshot is never written to
            self._totals = row if self._totals is None else self._totals.to(row.device) + row

    def read(self, reset: bool = False) -> dict[str, float]:
        with self._lock:
            totals = self._totals
            if reset:
                self._totals = None
        if totals is None:
            return dict.fromkeys(KEYS, 0.0)
        if totals.is_cuda:
            # The sums were queued on the engine's stream, not this thread's: its copy alone would not wait for them.
            torch.cuda.synchronize(totals.device)
        return dict(zip(KEYS, totals.tolist()))


def per_sequence_counts(batch_size: int, device=None, **columns) -> torch.Tensor:
    """float32 ``[B, len(KEYS)]``: one step's counts per sequence (``[B]`` tensors or numbers).

    Missing keys are zero. float32 is exact for these counts (each < 2**24). One stack of the columns (dtypes
    promote to float32 or float64, then one cast): a handful of launches a step, not two per column.
    """
    unknown = set(columns) - set(KEYS)
    if unknown:
        raise KeyError(f'unknown run statistics {sorted(unknown)}')
    zeros = torch.zeros(batch_size, dtype=torch.float32, device=device)

    def column(key):
        value = columns.get(key)
        if value is None:
            return zeros
        if isinstance(value, torch.Tensor):
            return value.reshape(-1).expand(batch_size) if value.numel() == 1 else value
        return torch.full((batch_size, ), float(value), dtype=torch.float32, device=device)

    return torch.stack([column(key) for key in KEYS], dim=1).to(torch.float32)


def whole_block_counts(decoded: torch.Tensor, **columns) -> torch.Tensor:
    """:func:`per_sequence_counts` of a decode step that forwarded every block row (a stock step), from ``decoded``
    (bool ``[B, L]``, the tokens it decoded): every row processed and deep, plus ``columns``."""
    batch_size, length = decoded.shape
    return per_sequence_counts(batch_size, device=decoded.device, decode_steps=1, generated_tokens=decoded.sum(dim=1),
                               processed_tokens=length, deep_tokens=length, **columns)


def live_run_stats() -> list[RunStats]:
    with _LOCK:
        return list(_LIVE)
