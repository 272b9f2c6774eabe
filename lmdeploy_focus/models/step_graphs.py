"""Runs a sparse decode step (:mod:`.sparse_step`): eagerly, or from CUDA graphs captured at warm-up.

Why two graphs and one host read, not upstream's one graph per batch bucket: the deep layers are
worth running on exactly the rows FOCUS kept (at bs 64–256 they are 30–60 % of the block), and
that count is data. The front graph (``B̂`` sequences, ``P̂ <= B̂·L`` static rows) ends with the counts;
the host reads them (the step's only sync, taken when the GPU has just finished layers 0–1) and
replays the deep graph of the smallest captured row bucket ``K̂ >= K``. Upstream's
``CUDASingleGraphRunner`` captures one model call whose inputs are the model's kwargs, so it cannot
express a host read between two halves; its conventions are kept: warm-up run before capture,
``thread_local`` capture mode, one memory pool shared by every graph here (they never run
concurrently), buffers that outlive a replay allocated outside the pool.

Buckets: batch buckets are the sizes upstream warms up that do not run stock steps (those sizes run
upstream's step and graph, ``--dllm-stock-step-rows``), largest first; row
buckets split ``B̂·L`` into :data:`ROW_BUCKETS` equal steps (multiples of 16 rows), so the deep
layers run at most one step of padding rows (≤ 1/32 of ``B̂·L`` where ``B̂·L ≥ 512``; below that the 16-row
steps are coarser; half a step on average). With
FOCUS the front (layers 0–1) also runs on a row bucket ``P̂``, one of about :data:`FRONT_BUCKETS`
evenly spaced deep row buckets, picked from a bound on the step's processed rows that the previous
step's counts carried (no extra sync; a sequence that joins adds ``L``). A bound that proves too small (a bug, never by
design) is seen in the same counts and the front reruns on all ``B̂·L`` rows.
Small batches read nothing (:data:`SYNC_FREE_ROWS`): where the batch has at most that many block rows ``B·L``, the
layers are weight-bound (a 16-row and a 128-row GEMM cost the same), so the host skips the read: the front runs on
every row, the deep layers on the row bucket that holds all ``B·L`` rows, and a small graph
puts the hidden states of the rows that need logits at their ``b*L+p`` slots (zeros elsewhere), so the LM head,
the sampler and the unmasker run on every slot, as stock does. There the read would cost the front's time in
series with the engine's host work, which at bs 1–4 is as long as the GPU's step; the tokens are those of the
step that reads (the same rows get the same logits; the others get none in either). On a MoE model the padding
rows this runs through the experts are zeros (``StepConfig.zero_padding``), so they all route to one set of experts.
Everything a step will replay — and every Triton variant its kernels need — is captured, hence
compiled, during upstream's decode warm-up, before the first request. A graph-runner reset while serving (a weight
update, which no warm-up follows) drops them; each batch bucket is then captured again at its next step
(:meth:`StepGraphs.dropped_bucket`), that step waiting for it, as upstream's runner recaptures its own graphs.
"""
import os
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import torch

from ..config.env_switch import env_switch
from ..log import logger
from . import tp_layout_check
from .sparse_step import (COUNTS, DeepRows, FrontOutputs, StepConfig, StepInputs, copy_into, deep, empty_like_tree,
                          front, hidden_by_slot, outputs_for_batch)

# 64 measured +0.5-1.3 % throughput for 9 s more decode warm-up on SDAR-8B (BENCHMARKS.md), so 32 stays.
ROW_BUCKETS = 32
ROW_ALIGN = 16
# Experiments only: another number of row buckets (warm-up time and graph count grow with it).
ROW_BUCKETS_ENV = 'LMDEPLOY_FOCUS_ROW_BUCKETS'
# FOCUS's front (layers 0-1) runs on one of FRONT_BUCKETS row counts, each a deep row bucket (so the deep
# rows K <= P <= P̂ never need a deep bucket above the front's rows). Layers 0-1 are ~1/30 of a kept row's
# work, so a step 4x coarser than the deep one (at the default ROW_BUCKETS) costs little padding and few captures.
FRONT_BUCKETS = 8
# Experiments only: another number of front row buckets; 1 runs every front on all B̂·L rows (the step
# before the front had buckets), for same-run comparisons.
FRONT_BUCKETS_ENV = 'LMDEPLOY_FOCUS_FRONT_BUCKETS'


# A batch of at most this many block rows (B·L) steps without the row-count read (module docstring): 128 is
# bs 4 at L = 32, where SDAR-8B's GEMMs are still weight-bound on an H100 (~300 rows to the compute bound;
# measured: +5.8 % / +5.7 % at bs 1 / 4 against reading). MoE models too, with their padding rows zeroed
# (StepConfig.zero_padding; LLaDA2.0-mini shape at bs 4: 1.00x stock sync-free against 0.93x reading, and 0.73x
# sync-free with arbitrary padding rows, which reached many more experts).
SYNC_FREE_ROWS = 128
# Experiments only: another limit (0: every step reads the counts, the step before sync-free small batches).
SYNC_FREE_ROWS_ENV = 'LMDEPLOY_FOCUS_SYNC_FREE_ROWS'
# Experiments only: 1 / 0 forces zero padding rows (StepConfig.zero_padding; the default: on for MoE models) on / off.
ZERO_PADDING_ENV = 'LMDEPLOY_FOCUS_ZERO_PADDING'


def _int_from_env(name: str, default: int, low: int, high: int, what: str) -> int:
    text = os.environ.get(name, '').strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f'{name}={text!r}: expected an integer from {low} to {high} ({what}; unset it for the '
                         f'default {default})')
    return int(text)


def row_bucket_count() -> int:
    """:data:`ROW_BUCKETS`, or the integer in ``$LMDEPLOY_FOCUS_ROW_BUCKETS`` (2..256)."""
    return _int_from_env(ROW_BUCKETS_ENV, ROW_BUCKETS, 2, 256, 'the number of deep-layer row buckets per batch bucket')


def front_bucket_count() -> int:
    """:data:`FRONT_BUCKETS`, or the integer in ``$LMDEPLOY_FOCUS_FRONT_BUCKETS`` (1..256)."""
    return _int_from_env(FRONT_BUCKETS_ENV, FRONT_BUCKETS, 1, 256, 'the number of front row buckets per batch bucket')


def sync_free_rows() -> int:
    """:data:`SYNC_FREE_ROWS`, or the integer in ``$LMDEPLOY_FOCUS_SYNC_FREE_ROWS`` (0..4096)."""
    return _int_from_env(SYNC_FREE_ROWS_ENV, SYNC_FREE_ROWS, 0, 4096,
                         'the most block rows B*L a decode step runs without reading its row counts')


def zero_padding(moe: bool = False) -> bool:
    """Whether the step's padding rows are zeros (``StepConfig.zero_padding``): a MoE model's, unless
    ``$LMDEPLOY_FOCUS_ZERO_PADDING`` (0 or 1) says otherwise."""
    return env_switch(ZERO_PADDING_ENV, default=moe)


def _no_mark(phase: str) -> None:
    pass


def row_buckets(batch_bucket: int, block_length: int, count: int = ROW_BUCKETS) -> list[int]:
    """Deep-layer row counts captured for a batch bucket: ``count`` equal steps up to ``B̂·L``."""
    total = batch_bucket * block_length
    step = -(-total // count)
    step = -(-step // ROW_ALIGN) * ROW_ALIGN
    buckets = list(range(step, total, step))
    return buckets + [total]


def front_row_buckets(deep_buckets: list[int], count: int) -> list[int]:
    """About ``count`` of the deep row buckets, evenly spaced, always including the whole row list."""
    stride = max(1, len(deep_buckets) // count)
    return sorted(set(deep_buckets[stride - 1::stride]) | {deep_buckets[-1]})


def pick(buckets, size: int) -> int | None:
    """Smallest bucket >= size (None if none)."""
    fitting = [b for b in buckets if b >= size]
    return min(fitting) if fitting else None


class _Replayable:
    """A CUDA graph of ``fn``, or ``fn`` itself where graphs are not used (CPU: the padded path eagerly)."""

    def __init__(self, fn, pool, use_graph: bool):
        self.fn = fn
        self.graph = None
        fn()  # warm-up: compiles kernels, initialises cuBLAS, before anything is captured
        if use_graph:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, stream=torch.cuda.current_stream(),
                                  capture_error_mode='thread_local'):
                fn()

    def replay(self) -> None:
        if self.graph is None:
            self.fn()
        else:
            self.graph.replay()


@dataclass
class _Bucket:
    inputs: StepInputs  # static, B̂ sequences
    outputs: FrontOutputs  # static, B̂·L rows; a front on P̂ rows fills the first P̂
    front: dict = field(default_factory=dict)  # front row bucket P̂ -> _Replayable
    deep: dict = field(default_factory=dict)  # row bucket -> _Replayable
    by_slot: _Replayable | None = None  # sync-free steps: the deep rows needing logits to their slots
    valid_size: int = -1  # the batch size ``inputs.seq_valid`` marks valid now (-1: none yet, as captured)
    # per batch size B (views of the static buffers, made once: a step then slices nothing on the host):
    fill_targets: dict = field(default_factory=dict)  # (B, input field names) -> the static inputs' first B rows
    batch_outputs: dict = field(default_factory=dict)  # B -> the static outputs cut to B (outputs_for_batch)


class StepRun(NamedTuple):
    """What :meth:`StepGraphs.run` returns."""
    outputs: FrontOutputs  # per-sequence fields cut to the batch's B (outputs_for_batch); ``rows`` [B̂]-sized
    # [K, D]: the deep rows after the final norm; sync-free: [B·L, D], slot b*L+p, zeros where no logits are needed
    hidden: torch.Tensor
    num_rows: int  # rows of ``hidden``: K (B·L sync-free)
    num_logit_rows: int  # M: the first M of ``outputs.rows.logit_rows`` need logits (sync-free: every slot, B·L)
    next_rows_bound: int | None  # the next step of these sequences processes at most this many rows (None: unknown)
    deep_rows: int  # rows the deep layers ran on: K (sync-free: the padded bucket, K is not read)
    sync_free: bool = False  # no row-count read: ``hidden`` is by slot


class StepGraphs:
    """Static buffers and graphs of the sparse decode step; :meth:`run` is the step's forward."""

    def __init__(self, parts, config: StepConfig, attention_rows, moe: bool = False):
        self.parts = parts
        self.config = replace(config, zero_padding=zero_padding(moe))  # a bad $LMDEPLOY_FOCUS_ZERO_PADDING fails here
        self.attention_rows = attention_rows  # context manager: deep rows for the attention layers
        self.enabled = False  # upstream's graph runner is on (eager_mode=False): capture at warm-up (and after a reset)
        self.use_graph = torch.cuda.is_available()  # False: the padded path runs eagerly (CPU tests)
        self.row_bucket_count = row_bucket_count()  # a bad $LMDEPLOY_FOCUS_ROW_BUCKETS fails at engine build
        self.front_bucket_count = front_bucket_count()  # same for $LMDEPLOY_FOCUS_FRONT_BUCKETS
        self.buckets: dict[int, _Bucket] = {}
        # every batch bucket captured since start, kept through a graph reset: a bucket a reset dropped while
        # serving (a weight update) is captured again at its next step (:meth:`dropped_bucket`)
        self.capture_sizes: set[int] = set()
        self._resets = 0  # resets so far: a capture that a reset overtook registers nothing
        self.sync_free_rows = sync_free_rows()  # same for $LMDEPLOY_FOCUS_SYNC_FREE_ROWS
        self._pool = None
        self._block_offsets: torch.Tensor | None = None  # int32 [B̂max, pages], shared by all buckets
        self._hidden: torch.Tensor | None = None  # [B̂max·L, hidden], every deep graph's output
        self._by_slot: torch.Tensor | None = None  # [sync_free_rows + 1, hidden]: sync-free steps' LM-head input
        self._overflow_warned = False

    @property
    def sync_free_rows(self) -> int:
        """The most block rows ``B·L`` a step runs without reading its row counts (0: every step reads)."""
        return self._sync_free_rows

    @sync_free_rows.setter
    def sync_free_rows(self, rows: int) -> None:
        if self.buckets:  # the captured slot graphs and their buffer are sized by it
            raise RuntimeError('sparse decode step: the sync-free limit is fixed once graphs are captured; set it '
                               'before the decode warm-up (or after a graph reset)')
        self._sync_free_rows = rows

    def steps_sync_free(self, batch_size: int) -> bool:
        """Whether a decode step of ``batch_size`` sequences runs without reading its row counts."""
        return batch_size * self.config.block_length <= self._sync_free_rows

    # ---- the step ---------------------------------------------------------------------------------

    def run(self, batch: StepInputs, kv_caches, block_offsets, attn_metadata, mark=_no_mark,
            row_bound: int | None = None) -> StepRun:
        """Front, the row-count read, deep.

        ``row_bound``: at most this many rows are processed (the last step's ``next_rows_bound``, plus
        ``L`` per sequence joined since; None: unknown, the front runs on every row).
        ``mark(phase)`` records phase ends for the profiling timer.
        """
        batch_size = batch.input_ids.size(0)
        slots = batch_size * self.config.block_length
        sync_free = self.steps_sync_free(batch_size)
        bucket = pick(self.buckets, batch_size)
        if self.front_bucket_count == 1 or sync_free:
            row_bound = None
        if bucket is None:
            if batch.seq_valid is None:
                batch = replace(batch, seq_valid=torch.ones_like(batch.needs_warmup))
            if sync_free:  # every row through every layer there is (padding past K), no read
                outputs = front(self.parts, batch, self.config, kv_caches, block_offsets)
                mark('front')
                self._check_layout(outputs)
                hidden = deep(self.parts, outputs.rows, slots, self.config, kv_caches, block_offsets, attn_metadata,
                              self.attention_rows)
                by_slot = hidden_by_slot(outputs.rows, hidden, hidden.new_empty(slots + 1, hidden.size(-1)))
                mark('deep_layers')
                return StepRun(outputs, by_slot, slots, slots, None, slots, sync_free=True)
            rows = None if row_bound is None else max(row_bound, 1)
            outputs = front(self.parts, batch, self.config, kv_caches, block_offsets, num_rows=rows)
            mark('front')
            counts = self._read_counts(outputs)  # the step's host sync
            if counts['front_overflow']:
                outputs = front(self.parts, batch, self.config, kv_caches, block_offsets)
                counts = self._read_counts(outputs)
            mark('row_count_read')
            num_rows = counts['rows']
            hidden = deep(self.parts, outputs.rows, num_rows, self.config, kv_caches, block_offsets, attn_metadata,
                          self.attention_rows)
            mark('deep_layers')
            return StepRun(outputs, hidden, num_rows, counts['logit_rows'], counts['next_rows_bound'], num_rows)
        graphs = self.buckets[bucket]
        self._fill(graphs, batch, block_offsets)
        fronts = graphs.front
        fronts[self._front_rows(fronts, row_bound)].replay()
        mark('front')
        outputs = graphs.batch_outputs.get(batch_size)
        if outputs is None:
            outputs = graphs.batch_outputs[batch_size] = outputs_for_batch(graphs.outputs, batch_size)
        if sync_free:
            self._check_layout(graphs.outputs)
            deep_rows = pick(graphs.deep, slots)  # K <= B·L: the batch's rows all fit, whatever K is
            graphs.deep[deep_rows].replay()
            graphs.by_slot.replay()
            mark('deep_layers')
            return StepRun(outputs, self._by_slot[:slots], slots, slots, None, deep_rows, sync_free=True)
        counts = self._read_counts(graphs.outputs)  # the step's host sync
        if counts['front_overflow']:
            fronts[max(fronts)].replay()
            counts = self._read_counts(graphs.outputs)
        mark('row_count_read')
        num_rows = counts['rows']
        graphs.deep[pick(graphs.deep, max(num_rows, 1))].replay()
        mark('deep_layers')
        return StepRun(outputs, self._hidden[:num_rows], num_rows, counts['logit_rows'], counts['next_rows_bound'],
                       num_rows)

    @staticmethod
    def _front_rows(fronts: dict, row_bound: int | None) -> int:
        """The front row bucket for a bound (the largest when unknown or above every bucket)."""
        fitting = None if row_bound is None else pick(fronts, max(row_bound, 1))
        return max(fronts) if fitting is None else fitting

    @staticmethod
    def _check_layout(outputs: FrontOutputs) -> None:
        if outputs.layout_check is not None:  # debug only (a host read): LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1 at TP > 1
            tp_layout_check.verify(outputs.layout_check)

    def _read_counts(self, outputs: FrontOutputs) -> dict:
        """The step's host read: ``COUNTS`` by name (and, debug only, the TP layout check)."""
        counts = dict(zip(COUNTS, outputs.rows.counts.tolist()))
        self._check_layout(outputs)
        if counts['front_overflow'] and not self._overflow_warned:
            self._overflow_warned = True
            logger.warning('sparse decode step: more processed rows than the bound carried from the last step; the '
                           'front reran on every row (correct, slower). Please report this with the engine options.')
        return counts

    def _fill(self, graphs: _Bucket, batch: StepInputs, block_offsets: torch.Tensor) -> None:
        """The batch's inputs into the first B rows of the bucket's static inputs: one foreach copy (one host call for
        every field and the page table, against two ops a field)."""
        static, size = graphs.inputs, batch.input_ids.size(0)
        if batch.seq_valid is not None:
            raise ValueError('sparse decode step: a padded step marks its own valid sequences (the first B); pass '
                             'seq_valid=None')
        names = tuple(f.name for f in fields(batch) if getattr(batch, f.name) is not None)
        targets = graphs.fill_targets.get((size, names))
        if targets is None:
            missing = [name for name in names if getattr(static, name) is None]
            if missing:
                raise ValueError(f'sparse decode step: inputs {missing} were not captured in this bucket\'s graphs (the '
                                 f'step config decides which inputs exist; this batch was built for another one)')
            targets = graphs.fill_targets[size, names] = [getattr(static, name)[:size] for name in names]
        sources = [getattr(batch, name) for name in names]
        for name, source, target in zip(names, sources, targets):
            if source.shape != target.shape:  # copy_ would broadcast a wrong shape silently
                raise ValueError(f'sparse decode step: input {name} has shape {tuple(source.shape)}, the static buffer '
                                 f'expects {tuple(target.shape)}')
        rows, pages = block_offsets.shape
        torch._foreach_copy_(targets + [self._block_offsets[:rows, :pages]], sources + [block_offsets])
        if graphs.valid_size != size:  # the batch's B sequences are valid: rewritten only when B changes
            static.seq_valid[:size] = True
            static.seq_valid[size:] = False
            graphs.valid_size = size

    # ---- capture: at warm-up, or at a bucket's next step after a graph reset while serving -------------

    def capture(self, batch_bucket: int, kv_caches, attn_metadata) -> None:
        """Capture the front graph of ``batch_bucket`` sequences and its deep graphs (padding sequences only: no
        K/V is written, so requests may hold pages meanwhile)."""
        if batch_bucket in self.buckets:
            return
        resets = self._resets
        try:
            graphs = self._capture_bucket(batch_bucket, kv_caches, attn_metadata)
        except Exception:
            if self._resets == resets:
                raise
        if self._resets != resets:  # a reset (another thread: a weight update) dropped the buffers these point at
            logger.warning(f'sparse decode step: a graph reset came while batch bucket {batch_bucket} was being '
                           'captured; it is captured again at its next step.')
            return
        self.buckets[batch_bucket] = graphs
        self.capture_sizes.add(batch_bucket)
        logger.info(f'sparse decode step: captured batch bucket {batch_bucket} ({len(graphs.front)} front and '
                    f'{len(graphs.deep)} deep row buckets{"" if self.use_graph else ", eager"}).')

    def _capture_bucket(self, batch_bucket: int, kv_caches, attn_metadata) -> _Bucket:
        length = self.config.block_length
        device = kv_caches[0][0].device
        if self._pool is None and self.use_graph:
            self._pool = torch.cuda.graph_pool_handle()
        num_pages = kv_caches[0][0].size(0)
        if self._block_offsets is None:
            # upstream warms up the largest batch first, so the shared buffers are sized once; after a reset, by
            # the largest bucket captured before, whichever bucket's step comes first
            rows = max(self.capture_sizes | {batch_bucket})
            self._block_offsets = torch.zeros(rows, num_pages, dtype=torch.int32, device=device)
        elif self._block_offsets.size(0) < batch_bucket:
            raise RuntimeError(f'sparse decode step: batch bucket {batch_bucket} captured after a smaller one '
                               f'({self._block_offsets.size(0)}); the largest must come first')
        inputs = _warmup_inputs(batch_bucket, length, device, auto=self.config.focus is not None
                                and self.config.focus.auto is not None)
        block_offsets = self._block_offsets[:batch_bucket]
        static = empty_like_tree(front(self.parts, inputs, self.config, kv_caches, block_offsets))
        graphs = _Bucket(inputs=inputs, outputs=static)
        deep_rows = row_buckets(batch_bucket, length, self.row_bucket_count)
        # without FOCUS the front is bookkeeping only (no layer runs in it): one front on every row
        front_rows = deep_rows[-1:] if self.config.focus is None else front_row_buckets(deep_rows,
                                                                                         self.front_bucket_count)
        for rows in front_rows:
            graphs.front[rows] = _Replayable(self._front_fn(inputs, static, rows, kv_caches, block_offsets),
                                             self._pool, self.use_graph)
        for rows in deep_rows:
            graphs.deep[rows] = _Replayable(self._deep_fn(static.rows, rows, kv_caches, block_offsets, attn_metadata),
                                            self._pool, self.use_graph)
        if self.steps_sync_free(1):  # a batch of this bucket may step sync-free (the smallest one, at least)
            graphs.by_slot = _Replayable(self._by_slot_fn(static.rows), self._pool, self.use_graph)
        return graphs

    def replayable(self, fn) -> _Replayable:
        """``fn`` (reading and writing fixed tensors only) captured now as one more graph in the step graphs'
        memory pool (while capturing a bucket; it never runs concurrently with them), or ``fn`` itself without
        CUDA. The caller owns the result and must drop it where :meth:`reset` drops the step graphs (the α
        controller does)."""
        if self._pool is None and self.use_graph:
            self._pool = torch.cuda.graph_pool_handle()
        return _Replayable(fn, self._pool, self.use_graph)

    def _front_fn(self, inputs: StepInputs, static: FrontOutputs, num_rows: int, kv_caches, block_offsets):

        def run_front():
            copy_into(static, front(self.parts, inputs, self.config, kv_caches, block_offsets, num_rows=num_rows))

        return run_front

    def _deep_fn(self, rows: DeepRows, num_rows: int, kv_caches, block_offsets, attn_metadata):

        def run_deep():
            hidden = deep(self.parts, rows, num_rows, self.config, kv_caches, block_offsets, attn_metadata,
                          self.attention_rows)
            if self._hidden is None:
                self._hidden = hidden.new_empty(self._block_offsets.size(0) * self.config.block_length,
                                                hidden.size(-1))
            self._hidden[:num_rows].copy_(hidden)

        return run_deep

    def _by_slot_fn(self, rows: DeepRows):

        def run_by_slot():
            if self._by_slot is None:
                self._by_slot = self._hidden.new_empty(self.sync_free_rows + 1, self._hidden.size(-1))
            hidden_by_slot(rows, self._hidden, self._by_slot)

        return run_by_slot

    @property
    def has_dropped(self) -> bool:
        """Some captured bucket is missing (a reset since): ``buckets`` only ever holds sizes of ``capture_sizes``."""
        return len(self.buckets) < len(self.capture_sizes)

    def dropped_bucket(self, batch_size: int) -> int | None:
        """The batch bucket a step of ``batch_size`` sequences would replay if a graph reset had not dropped it
        (None: captured, or never captured: no graphs, or a batch above every bucket, which runs eagerly)."""
        if not self.has_dropped:
            return None
        size = pick(self.capture_sizes, batch_size)
        return None if size is None or size in self.buckets else size

    def forget(self, batch_bucket: int) -> None:
        """A bucket whose capture after a reset failed: its batches take the next larger bucket (eager above every
        bucket) until a warm-up captures it."""
        self.capture_sizes.discard(batch_bucket)

    def reset(self) -> None:
        """Drop every graph and buffer: upstream's graph runner reset (sleep, weight update, release)
        may free the KV caches and weights they point to. A wake-up's decode warm-up captures them all again;
        without one (a weight update while serving) each batch bucket is captured again at its next step, as
        upstream's graph runner captures its own (:meth:`dropped_bucket`)."""
        if self.buckets:
            logger.info('sparse decode step: graphs dropped with upstream\'s graph-runner reset; each batch bucket '
                        'is captured again at its next step, or by the decode warm-up of a wake-up.')
        self._resets += 1
        self.buckets.clear()
        self._pool = self._block_offsets = self._hidden = self._by_slot = None


def _warmup_inputs(batch: int, length: int, device, auto: bool = False) -> StepInputs:
    """Padding sequences only: the kernels are launched (and compiled) for the bucket's shapes but no
    row is valid, so every row bucket's deep graph can be warmed up on the front's outputs and no
    K/V is written. A capture records launches, not data."""
    return StepInputs(input_ids=torch.zeros(batch, length, dtype=torch.long, device=device),
                      masked=torch.ones(batch, length, dtype=torch.bool, device=device),
                      history=torch.zeros(batch, dtype=torch.long, device=device),
                      uncached=torch.ones(batch, length, dtype=torch.bool, device=device),
                      needs_warmup=torch.ones(batch, dtype=torch.bool, device=device),
                      seq_valid=torch.zeros(batch, dtype=torch.bool, device=device),
                      progress=torch.full((batch, ), -1, dtype=torch.long, device=device),
                      avg_decoded=torch.ones(batch, dtype=torch.float32, device=device),
                      alpha=torch.ones(batch, dtype=torch.float32, device=device) if auto else None,
                      shadow_seq=torch.zeros(batch, dtype=torch.bool, device=device) if auto else None)
