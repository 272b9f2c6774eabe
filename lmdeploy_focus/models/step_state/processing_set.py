"""The processing set of a decode step as a fixed-size ragged layout (spec §2.1–2.2).

A step forwards, per sequence ``b``, only the block positions in its processing set, concatenated
into one ragged token list. The set sizes live on the device and are not known to the host
without a sync, so the layout has the static size ``B * L``: the ``total`` valid rows come first
(sequence after sequence, positions ascending) and the remaining ``B * L - total`` padding rows
follow. The padding rows are the *unprocessed* slots, in ``(b, p)`` order, so

* ``flat_index`` is a permutation of ``0 .. B*L-1``: gathers never read out of bounds and
  scatters never write one slot twice (deterministic ``index_copy_``);
* gathered padding rows hold real token ids and positions of the batch (never garbage), so a
  forward over all ``B * L`` rows stays finite. Kernels must still treat rows ``>= total`` as
  padding: no KV write for them, no attention output read from them.

A caller that runs the static shape (CUDA graphs, no sync) uses ``B * L`` rows; a caller that knows
``total``, or a bound on it, on the host may slice the first rows instead (``num_rows``).
"""
from dataclasses import dataclass
from functools import cached_property

import torch

from .delayed_cache_state import DelayedCacheState


@dataclass
class ProcessingSet:
    """Which block positions each sequence forwards this step, and where they sit in the ragged list."""
    processed: torch.Tensor  # bool [B, L]
    q_seqlens: torch.Tensor  # int64 [B]: number of processed positions
    q_start_loc: torch.Tensor  # int64 [B]: first ragged row of each sequence (exclusive cumsum)
    ragged_row: torch.Tensor  # int64 [B, L]: ragged row of each dense slot (>= total: padding row)
    flat_index: torch.Tensor  # int64 [B*L]: dense slot b*L+p of each ragged row (inverse of ragged_row)
    total: torch.Tensor  # int64 0-d: number of valid ragged rows

    @property
    def batch_size(self) -> int:
        return self.processed.size(0)

    @property
    def block_length(self) -> int:
        return self.processed.size(1)

    @property
    def num_rows(self) -> int:
        """Static upper bound of the ragged list: ``B * L``."""
        return self.processed.numel()

    @property
    def seq_index(self) -> torch.Tensor:
        """int64 [B*L]: sequence of each ragged row (padding rows: the unprocessed slot's sequence)."""
        return self.flat_index.div(self.block_length, rounding_mode='floor')

    @cached_property  # the front and the row metadata both read it: one kernel in the step's graph, not two
    def block_pos(self) -> torch.Tensor:
        """int64 [B*L]: block position of each ragged row."""
        return self.flat_index.remainder(self.block_length)

    # Derived on demand (tests, debugging): the step never reads them, so its graphs do not compute them.
    @property
    def positions(self) -> torch.Tensor:
        """int64 [B, L]: each sequence's processed positions ascending, then padding == L."""
        block_length = self.block_length
        block_range = torch.arange(block_length, device=self.processed.device)
        # processed positions first, each part ascending
        order = torch.argsort(self.processed.logical_not().long(), dim=1, stable=True)
        return torch.where(block_range[None, :] < self.q_seqlens[:, None], order, torch.full_like(order, block_length))

    @property
    def rightmost(self) -> torch.Tensor:
        """int64 [B]: last processed position, -1 if none."""
        # positions are 0..L-1, so (p + 1) * processed peaks at rightmost + 1 (0 if none)
        block_range = torch.arange(1, self.block_length + 1, device=self.processed.device)
        return (block_range[None, :] * self.processed.long()).amax(dim=1) - 1

    @property
    def valid_rows(self) -> torch.Tensor:
        """bool [B*L]: ragged row holds a processed token (``row < total``)."""
        return torch.arange(self.num_rows, device=self.total.device) < self.total

    @classmethod
    def from_mask(cls, processed: torch.Tensor) -> 'ProcessingSet':
        """Layout for an arbitrary per-sequence selection ``processed`` (bool [B, L]).

        Used for the delayed-cache set, and later for whatever FOCUS keeps of it.
        """
        batch_size, block_length = processed.shape
        device = processed.device
        proc = processed.long()
        skip = 1 - proc
        q_seqlens = proc.sum(dim=1)
        q_start_loc = q_seqlens.cumsum(0) - q_seqlens
        total = q_seqlens.sum()

        # Rank of each slot among the processed / unprocessed slots of its row (cumsum, no sort).
        rank_proc = proc.cumsum(dim=1) - 1
        rank_skip = skip.cumsum(dim=1) - 1

        # Whole batch: valid rows first, then every unprocessed slot in (b, p) order.
        num_skipped = block_length - q_seqlens
        skip_start = total + num_skipped.cumsum(0) - num_skipped
        ragged_row = torch.where(processed, q_start_loc[:, None] + rank_proc, skip_start[:, None] + rank_skip)
        dense_slot = torch.arange(batch_size * block_length, device=device)
        flat_index = torch.empty_like(dense_slot).scatter_(0, ragged_row.flatten(), dense_slot)
        return cls(processed=processed,
                   q_seqlens=q_seqlens,
                   q_start_loc=q_start_loc,
                   ragged_row=ragged_row,
                   flat_index=flat_index,
                   total=total)


def processing_mask(state: DelayedCacheState) -> torch.Tensor:
    """bool [B, L]: uncached positions; the whole block on warm-up or when nothing is uncached."""
    whole_block = state.needs_warmup | ~state.uncached.any(dim=1)
    return state.uncached | whole_block[:, None]


def processing_positions(state: DelayedCacheState) -> ProcessingSet:
    """The delayed-cache processing set of the next step (spec §2.1)."""
    return ProcessingSet.from_mask(processing_mask(state))


def gather_processed(dense: torch.Tensor, proc: ProcessingSet, num_rows: int | None = None) -> torch.Tensor:
    """Dense ``[B, L, ...]`` → ragged ``[num_rows, ...]`` (default ``B*L``, padding rows included)."""
    if tuple(dense.shape[:2]) != (proc.batch_size, proc.block_length):
        raise ValueError(f'expected a [{proc.batch_size}, {proc.block_length}, ...] block, got {tuple(dense.shape)}')
    flat = dense.flatten(0, 1)
    index = proc.flat_index if num_rows is None else proc.flat_index[:num_rows]
    return flat.index_select(0, index)


def scatter_processed(ragged: torch.Tensor,
                      proc: ProcessingSet,
                      out: torch.Tensor | None = None,
                      fill=None,
                      row_offset: int = 0) -> torch.Tensor:
    """Write the valid rows of ``ragged [N, ...]`` to their ``(b, p)`` slots of a dense ``[B, L, ...]``.

    ``N`` may be ``B * L`` (static layout) or anything ``>= total``; rows ``>= total`` are padding
    and never land anywhere. With ``out`` (a persistent buffer, written in place and returned),
    unprocessed slots keep their previous (stale) content, or get ``fill`` if given. Without
    ``out`` a new tensor is made, unprocessed slots set to ``fill`` (0 if None).
    ``row_offset``: ``ragged`` holds rows ``row_offset ..`` of the ragged layout (a chunk, so that
    vocab-wide rows are scattered without a second full-size copy).
    """
    num_rows = ragged.size(0)
    tail = ragged.shape[1:]
    if row_offset + num_rows > proc.num_rows:
        raise ValueError(f'rows {row_offset}..{row_offset + num_rows} for a {proc.batch_size}x{proc.block_length} block')
    if out is None:
        out = ragged.new_full((proc.batch_size, proc.block_length, *tail), 0 if fill is None else fill)
    elif fill is not None:
        out.masked_fill_(~proc.processed.view(proc.batch_size, proc.block_length, *([1] * len(tail))), fill)
    out_flat = out.view(proc.num_rows, *tail)  # must alias the caller's buffer
    index = proc.flat_index[row_offset:row_offset + num_rows]
    # Padding rows write back the slot's own content: one deterministic index_copy_, no host sync.
    rows = torch.arange(row_offset, row_offset + num_rows, device=index.device)
    valid = (rows < proc.total).view(num_rows, *([1] * len(tail)))
    source = torch.where(valid, ragged, out_flat.index_select(0, index))
    out_flat.index_copy_(0, index, source)
    return out


@dataclass
class RaggedStepMetadata:
    """What the model forward needs for a ragged decode step (flat, sequences concatenated)."""
    input_ids: torch.Tensor | None  # [num_rows] gathered ids (None if no dense ids were given)
    position_ids: torch.Tensor  # int64 [num_rows]: history + p (also the KV write slot of valid rows)
    q_seqlens: torch.Tensor  # int64 [B]
    q_start_loc: torch.Tensor  # int64 [B]
    kv_seqlens: torch.Tensor  # int64 [B]: keys of the whole block (history only for a sequence without rows)
    total: torch.Tensor  # int64 0-d: valid rows
    max_q_seqlen: int  # static bound L (the real max is on the device)
    num_rows: int  # static bound B*L unless the caller sliced


def ragged_step_metadata(proc: ProcessingSet,
                         history_lengths: torch.Tensor,
                         dense_input_ids: torch.Tensor | None = None,
                         num_ignored_history: torch.Tensor | None = None,
                         num_rows: int | None = None) -> RaggedStepMetadata:
    """Per-sequence lengths and per-row ids/positions of the step (spec §2.2).

    ``kv_seqlens = history + L`` for a sequence with rows (``- num_ignored_history`` when given, as upstream
    does with a sliding window): every query sees the whole block, as in stock decoding. Every block position
    has K/V at every layer a processed row reaches (the block's first step processes all of it; masked
    positions are processed every step). The reference fork read keys only up to the rightmost processed
    position, hiding the decoded tokens right of it (spec §10).
    """
    num_rows = proc.num_rows if num_rows is None else num_rows
    q_seqlens = proc.q_seqlens
    if num_rows < proc.num_rows:
        # Rows past ``num_rows`` do not exist: a sequence reaching past them is cut, so kernels stay in
        # bounds (a caller whose bound was too small sees ``total > num_rows`` and reruns on all rows).
        q_seqlens = ((proc.q_start_loc + q_seqlens).clamp(max=num_rows) - proc.q_start_loc).clamp(min=0)
    history = history_lengths.long()
    rows_seq = proc.seq_index[:num_rows]
    position_ids = history.index_select(0, rows_seq) + proc.block_pos[:num_rows]
    kv_seqlens = torch.where(proc.q_seqlens > 0, history + proc.block_length, history)
    if num_ignored_history is not None:
        kv_seqlens = kv_seqlens - num_ignored_history
    input_ids = None
    if dense_input_ids is not None:
        input_ids = gather_processed(dense_input_ids.reshape(proc.batch_size, proc.block_length), proc, num_rows)
    return RaggedStepMetadata(input_ids=input_ids,
                              position_ids=position_ids,
                              q_seqlens=q_seqlens,
                              q_start_loc=proc.q_start_loc,
                              kv_seqlens=kv_seqlens,
                              total=proc.total,
                              max_q_seqlen=proc.block_length,
                              num_rows=num_rows)
