"""One delayed-cache / FOCUS decode step, top to bottom.

    front   1. processing set: the block positions each sequence recomputes (spec §2.1), laid out
               on a static ``B̂·L`` row list, valid rows first (``ProcessingSet``)
            2. FOCUS only: embedding, layer 0 and layer 1 up to its K/V write on the first ``P̂``
               rows (``P̂`` >= the processed rows ``P``, from the last step's bound), with the
               masked candidates' importance at both layers (spec §3.2)
            3. FOCUS only: selection of the kept rows, their layout, the rows gathered (§3.4–3.7),
               and a bound on the next step's processed rows (:func:`next_step_rows`)
    host    reads the row counts (the step's one host sync) and picks the row bucket ``K̂``
    deep    4. FOCUS: layer 1's attention + MLP and layers 2..N-1 on the first ``K̂`` kept rows;
               delayed cache alone: every layer on the processed rows
    logits  5. the LM head on the rows whose slot is still masked (the only logits the unmasker
               reads), ``[M, V]`` (``DelayedCacheRuntime.row_logits``; scattered to ``B*L`` only where a
               request needs every position, ``dense_logits``). A small batch skips the host read: the deep
               layers run on a row bucket holding all ``B·L`` rows and the head on every slot
               (:func:`hidden_by_slot`; ``step_graphs.SYNC_FREE_ROWS``)

``front`` and ``deep`` are functions of tensors only (no host reads, shapes fixed by ``B̂``, ``P̂``
and ``K̂``), so :class:`~.step_graphs.StepGraphs` captures each in a CUDA graph; without graphs the
same two functions run eagerly with ``B̂ = B``, ``P̂`` the bound and ``K̂ = K`` (a sync-free batch: the
front on every row, the deep part on all ``B·L`` rows). Rows past the valid
ones are padding: no sequence owns them, so no kernel writes their K/V and nothing reads their
outputs (they only cost FLOPs: ``P̂ - P`` rows in layers 0–1, ``K̂ - K`` rows in the deep layers).
Their values are arbitrary, NaN included (the CUDA attention leaves them unwritten, the torch reference
zeroes them): every op between them and a valid row must stay row-local (norms, projections, MLP, the
MoE router and experts are), and nothing may check hidden states for NaN over all rows. With
``StepConfig.zero_padding`` (MoE models) they are zeros instead, so the router sends them all to one set of experts
rather than spreading arbitrary rows over many (each expert a padding row reaches is one more weight read).

Every tensor a step produces lives in a new :class:`FrontOutputs` (eager) or in the graph's
static copy of it; nothing is rewritten mid-forward.
"""
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Protocol

import torch

from ..kernels import focus_ops
from ..kernels.paged_ops import ragged_attention, sparse_fill_kv
from .step_state.delayed_cache_state import DelayedCacheState, still_uncached
from .step_state.focus_step import FocusConfig
from .step_state.processing_set import (ProcessingSet, gather_processed, processing_mask,
                                              ragged_step_metadata)
from . import tp_layout_check
from .importance_reduce import reduce_importance_delta


class DecoderParts(Protocol):
    """How the step drives a model's upstream modules (one adapter per model family)."""
    layers: list
    scale: float

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...  # [1, N] -> [1, N, D]

    def rotary(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def attention_inputs(self, layer, hidden, residual, rotary) -> tuple: ...  # -> q, k, v, residual

    def attention_output_and_mlp(self, layer, attn_out, residual) -> tuple: ...  # -> hidden, residual

    def final_norm(self, hidden, residual) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepConfig:
    block_length: int
    commit_mode: str  # 'exact': a fully decoded block is recomputed whole before it becomes history
    process_all: bool = False  # debug: every position processed (must reproduce stock decoding)
    focus: FocusConfig | None = None
    # static / sequential unmasking: the most tokens a step decodes per sequence (focus_state.decode_per_step);
    # None (dynamic): any number. Tightens the next step's row bound (next_step_rows).
    decode_per_step: int | None = None
    # padding rows are zeros through every layer (embedding / residual masked, attention output zeroed) instead of
    # arbitrary values: on a MoE model a zero row routes to one fixed set of experts (StepGraphs: MoE models)
    zero_padding: bool = False


@dataclass
class StepInputs:
    """What the front reads: the batch's block and its device state, padded to ``B̂`` sequences."""
    input_ids: torch.Tensor  # int64 [B̂, L]
    masked: torch.Tensor  # bool [B̂, L]: slot is MASKED in the step's input
    history: torch.Tensor  # int64 [B̂]: cache position of block position 0
    uncached: torch.Tensor  # bool [B̂, L]
    needs_warmup: torch.Tensor  # bool [B̂]
    # bool [B̂]: a real sequence (False: batch padding, processes nothing). None from the runtime: all B are;
    # StepGraphs.run marks them (in its static buffer only when the batch size changes); front() needs the tensor
    seq_valid: torch.Tensor | None
    # FOCUS only (None from the runtime without FOCUS; the delayed-cache front reads neither)
    progress: torch.Tensor | None  # int64 [B̂]: FOCUS block progress
    avg_decoded: torch.Tensor | None  # float32 [B̂]: FOCUS running mean of tokens decoded per step
    # --dllm-focus-alpha auto only (None otherwise): the α of each sequence's selection, and the sequences
    # that run this step in shadow mode (selection computed, nothing evicted: the controller's measurement)
    alpha: torch.Tensor | None = None  # float32 [B̂]
    shadow_seq: torch.Tensor | None = None  # bool [B̂]


# What the host reads after the front, in this order (one int64 tensor, one sync):
COUNTS = ('rows',  # valid deep rows K (kept rows with FOCUS, processed rows without)
          'logit_rows',  # how many of them need logits (slot still MASKED)
          'next_rows_bound',  # the next step processes at most this many rows (FOCUS; B̂·L, unused, without)
          'front_overflow')  # 1: more processed rows than the front's P̂ (a wrong bound: rerun at B̂·L)


@dataclass
class DeepRows:
    """The rows that go on into the deep layers (kept rows with FOCUS, processed rows without)."""
    position_ids: torch.Tensor  # int64 [R]: cache position of each row (its K/V slot)
    slot: torch.Tensor  # int64 [R]: dense slot b*L+p of each row
    q_start_loc: torch.Tensor  # int64 [B̂]
    q_seqlens: torch.Tensor  # int64 [B̂]
    # int64 [B̂]: keys each row attends to: history + L with delayed cache alone (the whole block), history +
    # max(progress, rightmost kept position) + 1 with FOCUS (kernels/default/focus.py, the kept layout); never the
    # reference fork's history + rightmost + 1, which hid decoded tokens right of the rightmost kept row
    kv_seqlens: torch.Tensor
    counts: torch.Tensor  # int64 [4]: see COUNTS
    logit_rows: torch.Tensor  # int64 [R]: row index of the rows needing logits, first ``counts[1]`` valid
    input_ids: torch.Tensor | None = None  # int64 [R]: delayed cache alone (deep starts at the embedding)
    # FOCUS (deep starts inside the eviction layer, after its K/V write)
    query: torch.Tensor | None = None  # [R, heads, head_dim] post-RoPE
    residual: torch.Tensor | None = None  # [R, hidden]
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None


@dataclass
class FocusOutcome:
    """What FOCUS decided this step ([B̂]-sized; read after unmasking for state and statistics)."""
    candidate_dense: torch.Tensor  # bool [B̂, L]: masked processed slots (eviction candidates)
    num_candidates: torch.Tensor  # int64 [B̂]
    num_kept_candidates: torch.Tensor  # int64 [B̂]: candidates that went on through the deep layers
    selected_dense: torch.Tensor  # bool [B̂, L]: processed slots the policy keeps
    evicting: torch.Tensor  # bool [B̂]: more candidates than the target
    progress_out: torch.Tensor  # int64 [B̂]: block progress after this step


@dataclass
class FrontOutputs:
    rows: DeepRows
    fresh: torch.Tensor  # bool [B̂, L]: slots computed through every layer this step
    processed_per_seq: torch.Tensor  # int64 [B̂]: rows into layer 0
    # The step's bookkeeping, computed here so that under CUDA graphs it costs no eager launches:
    uncached_next: torch.Tensor  # bool [B̂, L]: still uncached for the block's next step (uncached_after)
    # bool [B̂, L]: MASKED slots without fresh logits (the unmasker must skip them); None without FOCUS: delayed
    # cache processes every masked slot (masked slots are uncached)
    masked_unprocessed: torch.Tensor | None
    focus: FocusOutcome | None = None
    # debug only (LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1, TP > 1): int64 [3] kept-layout checksums, see tp_layout_check
    layout_check: torch.Tensor | None = None


# FrontOutputs' [B̂, ...] fields (cut to the batch's B by outputs_for_batch, with every field of ``focus``)
PER_SEQUENCE_OUTPUTS = ('fresh', 'processed_per_seq', 'uncached_next', 'masked_unprocessed')


def processing_set(inputs: StepInputs, config: StepConfig) -> ProcessingSet:
    """Delayed cache's processing set (spec §2.1), plus whole blocks to commit in ``exact`` mode."""
    state = DelayedCacheState(uncached=inputs.uncached, needs_warmup=inputs.needs_warmup)
    processed = processing_mask(state)
    if config.commit_mode == 'exact':
        # A fully decoded block is recomputed whole before it becomes history, so later blocks
        # never attend to KV computed while its right neighbours were still masks.
        processed = processed | (~inputs.masked).all(dim=1, keepdim=True)
    if config.process_all:
        processed = torch.ones_like(processed)
    return ProcessingSet.from_mask(processed & inputs.seq_valid[:, None])


def uncached_after(inputs: StepInputs) -> torch.Tensor:
    """bool [B̂, L]: the positions still uncached for the next step of the same block: readiness applied to the
    step's *input* mask (the rule of :func:`~.step_state.delayed_cache_state.readiness_update`)."""
    return still_uncached(inputs.uncached, inputs.masked)


def next_step_rows(inputs: StepInputs, config: StepConfig, decodable: torch.Tensor,
                   uncached_next: torch.Tensor) -> torch.Tensor:
    """0-d int64: at most this many rows are processed by the next step of these sequences.

    A sequence next processes its positions still uncached after this step (``uncached_next``,
    :func:`uncached_after`), or the whole block if none are left (its
    block was committed: a new block's warm-up). The unmasker commits a block one step after its
    last slot is decoded; with the ``exact`` commit that step recomputes the whole block, so a
    sequence that may complete this step (no more masked slots than ``decodable``, int64 [B̂]: its
    masked rows that get logits, the only ones the guard lets the unmasker decode, and than the
    unmasker's ``config.decode_per_step`` where that is fixed) counts ``L``.
    Sequences that join later add ``L`` each (the caller's part); sequences that leave only lower the sum.
    """
    length = inputs.masked.size(1)
    advanced = DelayedCacheState(uncached=uncached_next, needs_warmup=torch.zeros_like(inputs.needs_warmup))
    per_seq = processing_mask(advanced).sum(dim=1)  # the same rule the next step's processing set applies
    if config.process_all:
        whole = torch.ones_like(inputs.seq_valid)
    elif config.commit_mode == 'exact':
        if config.decode_per_step is not None:
            decodable = decodable.clamp(max=config.decode_per_step)
        whole = inputs.masked.sum(dim=1) <= decodable  # the block may complete: its commit step recomputes it whole
    else:
        whole = torch.zeros_like(inputs.seq_valid)
    per_seq = torch.where(whole, torch.full_like(per_seq, length), per_seq)
    return torch.where(inputs.seq_valid, per_seq, 0).sum()


def _logit_rows(needs_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The number of flagged rows and a permutation of the rows: flagged ones first, ascending."""
    flags = needs_logits.long()
    num_flagged = flags.sum()
    rank = torch.where(needs_logits, flags.cumsum(0) - 1, num_flagged + (1 - flags).cumsum(0) - 1)
    order = torch.empty_like(rank).scatter_(0, rank, torch.arange(rank.numel(), device=rank.device))
    return num_flagged, order


def front(parts, inputs: StepInputs, config: StepConfig, kv_caches, block_offsets,
          num_rows: int | None = None) -> FrontOutputs:
    """Steps 1–3: the rows of the step that go on into the deep layers.

    With FOCUS, layers 0–1 run on the first ``num_rows`` rows of the ``B̂·L`` row list (default all);
    a processing set larger than that is flagged in ``counts`` (``front_overflow``), never cut silently.
    """
    proc = processing_set(inputs, config)
    uncached_next = uncached_after(inputs)
    if config.focus is None:
        meta = ragged_step_metadata(proc, inputs.history, dense_input_ids=inputs.input_ids)
        needs_logits = gather_processed(inputs.masked, proc) & proc.valid_rows
        num_flagged, logit_rows = _logit_rows(needs_logits)
        # full_like, not new_tensor: a host-to-device copy cannot be captured in a CUDA graph
        counts = torch.stack([proc.total, num_flagged, torch.full_like(proc.total, proc.num_rows),
                              torch.zeros_like(proc.total)])
        rows = DeepRows(position_ids=meta.position_ids, slot=proc.flat_index, q_start_loc=meta.q_start_loc,
                        q_seqlens=meta.q_seqlens, kv_seqlens=meta.kv_seqlens, counts=counts, logit_rows=logit_rows,
                        input_ids=meta.input_ids)
        return FrontOutputs(rows=rows, fresh=proc.processed, processed_per_seq=proc.q_seqlens,
                            uncached_next=uncached_next, masked_unprocessed=None)
    num_rows = proc.num_rows if num_rows is None else min(num_rows, proc.num_rows)
    meta = ragged_step_metadata(proc, inputs.history, dense_input_ids=inputs.input_ids, num_rows=num_rows)
    return _focus_front(parts, inputs, config, proc, meta, uncached_next, kv_caches, block_offsets)


def _focus_front(parts, inputs: StepInputs, config: StepConfig, proc: ProcessingSet, meta, uncached_next,
                 kv_caches, block_offsets) -> FrontOutputs:
    focus = config.focus
    if focus.eviction_layer != 1:
        raise ValueError('FOCUS scores at layers 0 and 1 and evicts inside layer 1 (eviction_layer=1)')
    length = proc.block_length
    num_rows = meta.num_rows  # P̂: the rows layers 0-1 run on (valid rows first)
    scale = parts.scale
    candidate_dense = proc.processed & inputs.masked
    candidate = gather_processed(candidate_dense, proc, num_rows)  # padding rows are unprocessed slots: False
    num_candidates = candidate_dense.sum(dim=1)
    block_pos = proc.block_pos[:num_rows]

    def importance(q, k):
        return focus_ops.masked_importance(q, k, meta.q_start_loc, meta.q_seqlens, candidate, scale,
                                           max_q_len=length)

    def write_kv(layer_idx, k, v):
        k_cache, v_cache = kv_caches[layer_idx][0], kv_caches[layer_idx][1]
        sparse_fill_kv(k, v, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens, meta.position_ids,
                       meta.kv_seqlens)
        return k_cache, v_cache

    layer0, layer1 = parts.layers[0], parts.layers[1]
    hidden = parts.embed(meta.input_ids[None])
    if config.zero_padding:
        hidden = _zero_rows_past(hidden, proc.total)
    cos, sin = parts.rotary(hidden, meta.position_ids[None])
    # layer 0, whole
    q, k, v, residual = parts.attention_inputs(layer0, hidden, None, (cos, sin))
    importance0 = importance(q, k) if focus.needs_importance else None
    k_cache, v_cache = write_kv(0, k, v)
    attn = ragged_attention(q, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens, meta.kv_seqlens,
                            scale, max_q_len=length, zero_padding=config.zero_padding)
    hidden, residual = parts.attention_output_and_mlp(layer0, attn.reshape(1, q.size(0), -1), residual)
    # layer 1 up to its K/V write: evicted tokens still get fresh layer-1 K/V
    q, k, v, residual = parts.attention_inputs(layer1, hidden, residual, (cos, sin))
    write_kv(1, k, v)

    # selection (spec §3.4–3.6)
    if focus.auto is None:
        targets = focus_ops.focus_targets(num_candidates, inputs.avg_decoded, focus.alpha)
    else:
        # per-sequence α folded into the average: ceil(max(avg, 1) * α) is ceil(max(avg, 1) * α * 1) in the
        # same fp32 steps (α >= 1, so the product is >= 1 and the kernel's max(., 1) is a no-op)
        targets = focus_ops.focus_targets(num_candidates, inputs.avg_decoded.clamp(min=1.0) * inputs.alpha, 1.0)
    if focus.needs_importance:
        delta = reduce_importance_delta(importance(q, k) - importance0, focus.tp_size)
    else:
        delta = torch.zeros(q.size(0), dtype=torch.float32, device=q.device)
    keep = focus_ops.select_kept(delta, candidate, block_pos, meta.q_start_loc, meta.q_seqlens, targets,
                                 inputs.progress, policy=focus.policy, max_q_len=length)
    valid = proc.valid_rows[:num_rows]
    selected_dense = _to_dense(keep & valid, proc)
    if focus.shadow:
        keep = valid  # shadow: every processed row goes on
    kept_dense = proc.processed if focus.shadow else selected_dense
    if focus.auto is not None and not focus.shadow:
        # auto: the sequences measured this step keep every processed row (a per-row flag: static shapes)
        shadow_row = inputs.shadow_seq.index_select(0, proc.seq_index[:num_rows])
        keep = torch.where(shadow_row, valid, keep)
        kept_dense = torch.where(inputs.shadow_seq[:, None], proc.processed, selected_dense)

    # compaction (§3.7): kept rows first, sequence after sequence; the rest are padding
    layout = focus_ops.kept_layout(keep, meta.q_start_loc, meta.q_seqlens, block_pos, inputs.history,
                                   inputs.progress, max_q_len=length)
    # Debug hook, off unless LMDEPLOY_FOCUS_CHECK_TP_LAYOUT=1: the kept layout's checksum, min / max over
    # the attention TP ranks (device-side, one all-reduce); StepGraphs.run compares them at the counts read.
    layout_check = tp_layout_check.all_ranks_checksums(layout, focus.tp_size) if tp_layout_check.requested() else None
    src = layout.src_row
    kept_valid = torch.arange(src.numel(), device=src.device) < layout.total
    num_flagged, logit_rows = _logit_rows(candidate.index_select(0, src) & kept_valid)
    num_kept_candidates = (kept_dense & candidate_dense).sum(dim=1)
    next_rows = next_step_rows(inputs, config, num_kept_candidates, uncached_next)
    counts = torch.stack([layout.total, num_flagged, next_rows, (proc.total > num_rows).long()])
    rows = DeepRows(position_ids=meta.position_ids.index_select(0, src),
                    slot=proc.flat_index[:num_rows].index_select(0, src),
                    q_start_loc=layout.q_start_loc,
                    q_seqlens=layout.q_seqlens,
                    kv_seqlens=layout.kv_seqlens,
                    counts=counts,
                    logit_rows=logit_rows,
                    query=q.index_select(0, src),
                    residual=residual[0].index_select(0, src),
                    cos=cos.index_select(0, src),
                    sin=sin.index_select(0, src))
    outcome = FocusOutcome(candidate_dense=candidate_dense,
                           num_candidates=num_candidates,
                           num_kept_candidates=num_kept_candidates,
                           selected_dense=selected_dense,
                           evicting=(targets > 0) & (num_candidates > targets),
                           progress_out=layout.progress)
    return FrontOutputs(rows=rows, fresh=kept_dense, processed_per_seq=proc.q_seqlens, uncached_next=uncached_next,
                        masked_unprocessed=inputs.masked & ~kept_dense, focus=outcome, layout_check=layout_check)


def _zero_rows_past(x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``x`` (``[1, R, D]`` or ``[R, D]``) with its rows from ``count`` (0-d, on the device) on set to zero."""
    valid = torch.arange(x.size(-2), device=x.device) < count
    return torch.where(valid[:, None], x, 0.0)  # a Python scalar keeps x's dtype (no 0-d tensor to allocate)


def _to_dense(row_flags: torch.Tensor, proc: ProcessingSet) -> torch.Tensor:
    """bool [B, L] from per-row flags of the first ragged rows (padding rows must be False)."""
    dense = torch.zeros(proc.num_rows, dtype=torch.bool, device=row_flags.device)
    dense.index_copy_(0, proc.flat_index[:row_flags.size(0)], row_flags)
    return dense.view(proc.batch_size, proc.block_length)


@dataclass(frozen=True)
class AttentionRows:
    """The ragged layout a delayed-cache attention layer writes K/V for and attends with."""
    position_ids: torch.Tensor
    q_start_loc: torch.Tensor
    q_seqlens: torch.Tensor
    kv_seqlens: torch.Tensor
    block_offsets: torch.Tensor
    max_q_len: int
    zero_padding: bool = False  # rows owned by no sequence get a zero attention output (StepConfig.zero_padding)


def deep(parts, rows: DeepRows, num_rows: int, config: StepConfig, kv_caches, block_offsets, attn_metadata,
         attention_rows) -> torch.Tensor:
    """Step 4: hidden states ``[num_rows, hidden]`` of the first ``num_rows`` deep rows after the final norm.

    ``attention_rows(meta)`` is a context manager under which the model's delayed-cache attention
    layers attend over ``meta`` (the deep rows' layout).
    """
    meta = AttentionRows(position_ids=rows.position_ids[:num_rows], q_start_loc=rows.q_start_loc,
                         q_seqlens=rows.q_seqlens, kv_seqlens=rows.kv_seqlens, block_offsets=block_offsets,
                         max_q_len=config.block_length, zero_padding=config.zero_padding)
    valid_rows = rows.counts[COUNTS.index('rows')]  # K, for zero_padding (a view: nothing runs without it)
    with attention_rows(meta):
        if config.focus is None:
            hidden = parts.embed(rows.input_ids[:num_rows][None])
            if config.zero_padding:
                hidden = _zero_rows_past(hidden, valid_rows)
            cos, sin = parts.rotary(hidden, meta.position_ids[None])
            residual, first = None, 0
        else:
            layer1 = parts.layers[1]
            k_cache, v_cache = kv_caches[1][0], kv_caches[1][1]
            query = rows.query[:num_rows]
            attn = ragged_attention(query, k_cache, v_cache, block_offsets, meta.q_start_loc, meta.q_seqlens,
                                    meta.kv_seqlens, parts.scale, max_q_len=config.block_length,
                                    zero_padding=config.zero_padding)
            residual = rows.residual[:num_rows]
            if config.zero_padding:  # padding rows past K hold evicted rows' residuals (the layout's permutation)
                residual = _zero_rows_past(residual, valid_rows)
            hidden, residual = parts.attention_output_and_mlp(layer1, attn.reshape(1, num_rows, -1), residual[None])
            cos, sin = rows.cos[:num_rows], rows.sin[:num_rows]
            first = 2
        for idx in range(first, len(parts.layers)):
            hidden, residual = parts.layers[idx](hidden, rotary_pos_emb=(cos, sin), past_key_value=kv_caches[idx],
                                                 residual=residual, attn_metadata=attn_metadata)
        return parts.final_norm(hidden, residual)[0]


def hidden_by_slot(rows: DeepRows, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A step that did not read its counts (``StepGraphs``, sync-free): the deep rows that need logits at their
    slots ``b*L+p`` of ``out`` (``[S + 1, D]``, rewritten whole), zeros at every other slot; returns ``out[:S]``.

    Tensors only (no host read): ``rows.counts``' ``logit_rows`` says how many of ``rows.logit_rows`` are valid,
    and the rest are sent to the spare last row of ``out``, which nothing reads (``hidden``'s padding rows may
    hold anything, NaN included). Every slot needing logits must be below ``S`` (the batch's ``B·L`` fits).
    """
    spare = out.size(0) - 1
    count = min(rows.logit_rows.numel(), spare)  # M <= the batch's B·L <= S
    valid = torch.arange(count, device=out.device) < rows.counts[COUNTS.index('logit_rows')]
    index = torch.where(valid, rows.logit_rows[:count], 0)
    slot = torch.where(valid, rows.slot.index_select(0, index), spare)
    out.zero_()
    out.index_copy_(0, slot, hidden.index_select(0, index).to(out.dtype))
    return out[:spare]


def copy_into(dst, src) -> None:
    """Copy every tensor of dataclass ``src`` into the same field of ``dst`` (graph static outputs).

    A tensor with fewer rows than its target (a front run on ``P̂ < B̂·L`` rows) fills the target's first rows.
    """
    for f in fields(src):
        value, target = getattr(src, f.name), getattr(dst, f.name)
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            target.copy_(value)
        elif isinstance(value, torch.Tensor):
            if value.shape[1:] != target.shape[1:] or value.size(0) > target.size(0):
                raise ValueError(f'{f.name}: {tuple(value.shape)} does not fit the static {tuple(target.shape)}')
            target[:value.size(0)].copy_(value)
        elif is_dataclass(value):
            copy_into(target, value)


def slice_batch(tree, n: int):
    """``tree`` (a dataclass of [B̂, ...] tensors) cut to its first ``n`` sequences (views)."""
    return replace(tree, **{f.name: getattr(tree, f.name)[:n] for f in fields(tree)
                            if isinstance(getattr(tree, f.name), torch.Tensor)})


def outputs_for_batch(outputs: FrontOutputs, n: int) -> FrontOutputs:
    """The front's outputs with every per-sequence field cut to the batch's ``n`` sequences (views); ``rows`` (indexed
    by row; its ``q_seqlens`` is cut where read) and ``layout_check`` stay whole."""
    cut = {name: getattr(outputs, name)[:n] for name in PER_SEQUENCE_OUTPUTS if getattr(outputs, name) is not None}
    if outputs.focus is not None:
        cut['focus'] = slice_batch(outputs.focus, n)
    return replace(outputs, **cut)


def empty_like_tree(src):
    """A dataclass of the same structure as ``src`` with fresh uninitialised tensors (static buffers)."""
    values = {}
    for f in fields(src):
        value = getattr(src, f.name)
        if isinstance(value, torch.Tensor):
            value = torch.empty_like(value)
        elif is_dataclass(value):
            value = empty_like_tree(value)
        values[f.name] = value
    return type(src)(**values)
