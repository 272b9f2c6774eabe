"""Reference block-diffusion decode loop, with and without delayed cache: the oracle engine tests
compare against (focus-spec §1–2, commit variants §10).

What one call does, per prompt (each sequence advances on its own; one batch holds warm-up,
mid-block and commit steps at once):

* the prompt is padded with the mask token to a multiple of ``L`` (no padding when it already is
  one, as upstream); prefill runs every prompt block block-causally, and the logits of the last
  block unmask immediately. A prompt ending on a block boundary is committed by prefill itself
  (upstream's unmasker turns an all-UNMASKED block into CACHED), so decoding starts on a fresh block.
* a decode step forwards the sequence's *processing set* of its current block: all ``L`` positions
  without delayed cache (upstream's stock DLLM), else the uncached positions (spec §2.1). K/V of
  processed tokens go to ``history + p`` in every layer, queries attend non-causally to keys
  ``0 .. history + rightmost``, logits exist for processed rows only (other rows are NaN here, so a
  leak would show), and the existing guard keeps unprocessed masked slots from being unmasked.
* readiness is updated from the step's *input* mask; when a block is fully unmasked the next step
  is the commit step: ``'fast'`` (the fork) processes the still-uncached positions only,
  ``'exact'`` (HF/SGLang) the whole block, so committed KV is never stale. The block then becomes
  history and a fresh all-mask block starts with a warm-up step. ``'folded'`` is ``'exact'`` without
  the commit step: the block becomes history in the step that decodes its last slot, and the next
  step recomputes it whole next to the new block's first step (its rows as one more ragged entry,
  keys up to the block's end, so the new block stays unseen), so 8 steps a block do what 9 did.
* sampling is greedy (``argmax``, the engine with ``top_k=1``) and unmasking is upstream's
  ``UnmaskingProcessor``; stopping and trimming follow upstream's ``DLLMStoppingCriteria`` and
  ``SchedulerSequenceDLLM`` (see :class:`StopRule`).

Independent of the runtime's strategy code: processing sets, kv lengths, readiness, the FOCUS
targets, selection, progress and the running average are computed here per sequence from
focus-spec §2–3 (:class:`_SeqState`, :mod:`.focus_spec`), so the replay tests compare two
implementations. Shared with the runtime: upstream's ``UnmaskingProcessor`` and the torch paged
attention of ``lmdeploy_focus.kernels.default`` (inside the reference models), and under
``--dllm-focus-alpha auto`` the runtime's controller and shadow schedule (:mod:`.auto_alpha`).

Readability over speed: per-sequence host bookkeeping in Python; the model runs batched (ragged rows).
"""
import math
from dataclasses import dataclass, field

import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.config import DLLMConfig
from lmdeploy.pytorch.strategies.dllm.unmasking import UnmaskingProcessor

from lmdeploy_focus_dev.testing.paged_kv_cache import PagedKVCache

from . import focus_spec
from .auto_alpha import ReferenceAutoAlpha
from .sdar_model import PagedStep, SDARReference

MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED
COMMIT_FAST = 'fast'  # fork: commit step recomputes only still-uncached positions
COMMIT_EXACT = 'exact'  # HF / SGLang: commit step recomputes the whole block
COMMIT_FOLDED = 'folded'  # exact's recomputation inside the next block's first step (no commit step)


@dataclass
class StepRecord:
    """One forward of one sequence (``record_steps=True``); block tensors are ``[L]``."""
    kind: str  # 'prefill' or 'decode'
    history_length: int  # block start
    input_ids: torch.Tensor  # block tokens fed in (mask token at MASKED slots)
    input_mask: torch.Tensor  # block mask states fed in
    processed: torch.Tensor  # bool: positions forwarded this step
    kv_length: int  # keys the last layer attended: history + L, after FOCUS eviction history + progress + 1 (prefill: padded prompt length)
    logits: torch.Tensor  # [L, vocab]; NaN at unprocessed rows
    next_token_ids: torch.Tensor  # unmasker output (sampled candidates at still-MASKED slots)
    next_mask: torch.Tensor  # unmasker output mask
    is_warmup: bool  # first decode step of the block (processes the whole block)
    is_commit: bool  # input block fully UNMASKED: this step commits it
    kept: torch.Tensor | None = None  # FOCUS: bool [L], positions forwarded past the eviction layer

    @property
    def num_processed(self) -> int:
        return int(self.processed.sum())


@dataclass
class GenerationResult:
    """Outcome for one prompt."""
    token_ids: list[int]  # generated tokens, trimmed at stop token / max_new_tokens
    num_steps: int  # decode forwards incl. commit steps (the prefill is not counted)
    processed_per_step: list[int]  # tokens forwarded in each decode step (a folded commit's L rows included)
    kept_per_step: list[int]  # of those, tokens that went past FOCUS's eviction layer (all without FOCUS)
    decoded_per_step: list[int]  # tokens unmasked (MASKED -> UNMASKED) in each decode step
    all_token_ids: list[int]  # padded prompt, committed blocks and the last block (untrimmed)
    history_length: int  # committed tokens (their KV is final in the cache)
    steps: list[StepRecord] | None = None  # prefill first, then decode steps
    # FOCUS only, per decode step: the selection against what the step decoded (:class:`SelectionCounts`)
    selection_per_step: list['SelectionCounts'] | None = None
    history_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer K, V [history, kv_heads, dim]


@dataclass(frozen=True)
class SelectionCounts:
    """One FOCUS decode step of one sequence: its selection (spec §3.5, before enforcement) against the
    tokens the step decoded. ``scored_*`` count only when candidates outnumber the target (the only steps
    where a selection matters; the runtime's shadow statistics use the same rule)."""
    candidates: int  # masked processed positions
    kept_candidates: int  # of those, past the eviction layer (all of them in shadow mode)
    selected: int  # positions the policy picked
    scored_decoded: int  # decoded tokens, 0 unless candidates > target
    scored_selected_decoded: int  # of those, picked by the selection
    scored_random_expected: float  # what a random subset of the selection's size would pick: decoded * selected / candidates
    shadow: bool = False  # the step evicted nothing for this sequence (shadow mode, or auto's shadow step)


@dataclass
class StopRule:
    """The engine's DLLM stopping for one sequence, on host ints (upstream's criteria with the plugin's
    fixes, ``strategies/dllm/upstream_fixes/``).

    A block's tokens count once the whole block is UNMASKED (checked on the unmasker's output).
    ``max_new_tokens``: the budget starts at ``max_new_tokens + prompt_len % L`` (the prompt's last
    block is only partly generated); when it drops to <= 0 the block is cut after position
    ``L - 1 + budget``. Stop tokens are checked from ``output_start`` (the prompt's end) on: the first
    one before the cut ends generation after it. Ids the caller does not know may be ``None`` (never
    a stop token). Shared with the serving check's expected outputs (``checks/serving_edge``).
    """
    block_length: int
    prompt_length: int
    budget: int
    output_start: int
    stop_token_ids: frozenset
    valid_end: int = field(init=False)  # end of the tokens that count as sequence content

    def __post_init__(self):
        self.valid_end = self.prompt_length

    def after_step(self, block_start: int, next_token_ids: list[int], block_unmasked: bool) -> bool:
        """Update with one step's output; True when the sequence stops."""
        if not block_unmasked:
            return False
        L = self.block_length
        self.budget -= L
        self.valid_end = block_start + L
        end = L + min(self.budget, 0)  # block positions before the length cut
        first_checked = max(0, self.output_start - block_start)
        hits = [p for p in range(first_checked, end) if next_token_ids[p] in self.stop_token_ids]
        if hits:
            stop_pos = hits[0]
        elif self.budget <= 0:
            stop_pos = end - 1
        else:
            return False
        self.valid_end = block_start + stop_pos + 1
        return True


@dataclass
class _SeqState:
    """Delayed-cache and FOCUS state of one sequence's current block (spec §2.1, §3.4, §3.6)."""
    block_length: int
    uncached: list[bool] = field(init=False)  # position still has to be recomputed
    needs_warmup: bool = field(init=False)  # the next step processes the whole block
    progress: int = field(init=False)  # largest position processed through all layers (-1: none)
    decoded_sum: int = field(init=False)  # tokens unmasked by this block's decode steps
    decoded_steps: int = field(init=False)  # those steps that unmasked at least one

    def __post_init__(self):
        self.new_block()

    def new_block(self) -> None:
        self.uncached = [True] * self.block_length
        self.needs_warmup = True
        self.progress = -1
        self.decoded_sum = 0
        self.decoded_steps = 0

    def processing_positions(self) -> list[int]:
        """§2.1: the uncached positions; all of them on warm-up or when none is uncached."""
        positions = [p for p in range(self.block_length) if self.uncached[p]]
        if self.needs_warmup or not positions:
            positions = list(range(self.block_length))
        return positions

    def after_step(self, input_mask: list[int], decoded: int, committed: bool) -> None:
        """§2.1 readiness from the step's *input* mask, §3.8 decoded average; a fresh block on commit."""
        L = self.block_length
        for p in range(L):
            right_not_masked = p == L - 1 or input_mask[p + 1] != MASKED
            if input_mask[p] != MASKED and right_not_masked:
                self.uncached[p] = False
        self.needs_warmup = False
        self.decoded_sum += decoded
        self.decoded_steps += decoded > 0
        if committed:
            self.new_block()


@dataclass
class _Batch:
    """Decode state of every prompt: current blocks as ``[B, L]`` tensors, the rest on the host."""
    block_ids: torch.Tensor  # long [B, L]
    block_mask: torch.Tensor  # long [B, L]
    history: torch.Tensor  # long [B]: committed tokens == current block start
    active: torch.Tensor  # bool [B]: not stopped
    states: list[_SeqState]
    committed: list[list[int]]  # committed token ids per sequence (padded prompt + finished blocks)
    stops: list[StopRule]
    num_steps: list[int]
    processed_per_step: list[list[int]]
    kept_per_step: list[list[int]]
    decoded_per_step: list[list[int]]
    records: list[list[StepRecord]] | None
    selection_per_step: list[list[SelectionCounts]] | None = None
    first_step_average: int = 1  # FOCUS: focus_spec.first_step_average of the unmasking settings
    folded: bool = False  # COMMIT_FOLDED: a block becomes history in the step that decodes its last slot
    # COMMIT_FOLDED: the block committed last (the last L of ``committed``) awaits its recomputation, next step
    commit_pending: list[bool] | None = None

    @property
    def block_length(self) -> int:
        return self.block_ids.size(1)


def _unmasking_config(unmasking, block_length: int) -> DLLMConfig:
    """Upstream ``DLLMConfig`` from anything carrying its unmasking fields."""
    return DLLMConfig(block_length=block_length,
                      unmasking_strategy=unmasking.unmasking_strategy,
                      denoising_steps=unmasking.denoising_steps,
                      confidence_threshold=unmasking.confidence_threshold)


def _pad_prompt(prompt: list[int], block_length: int, mask_token_id: int) -> list[int]:
    """Upstream padding: mask tokens up to a multiple of ``L`` (none if already aligned)."""
    return list(prompt) + [mask_token_id] * ((-len(prompt)) % block_length)


def _new_cache(model: SDARReference, padded_lengths: list[int], max_new: list[int], block_length: int,
               page_size: int) -> PagedKVCache:
    """A NaN-initialised paged cache large enough for every sequence's worst case."""
    def pages(n):
        return -(-n // page_size)

    # generation never goes past the block holding token max_new, plus one fresh block
    num_pages = sum(pages(n + (m // block_length + 2) * block_length) for n, m in zip(padded_lengths, max_new))
    d = model.dims
    return PagedKVCache(num_layers=d.num_layers, num_pages=num_pages, page_size=page_size,
                        num_kv_heads=d.num_kv_heads, head_dim=d.head_dim, dtype=model.dtype)


def _page_table(cache: PagedKVCache, batch_size: int) -> torch.Tensor:
    return cache.allocator.page_table(list(range(batch_size)))


# ---- one step --------------------------------------------------------------------------------


def _decode_processing(batch: _Batch, delayed_cache: bool, commit_mode: str, process_all: bool) -> list[list[int]]:
    """Per sequence, the ascending block positions it forwards this step (none for stopped ones)."""
    L = batch.block_length
    chosen = []
    for b, state in enumerate(batch.states):
        if not bool(batch.active[b]):
            chosen.append([])
        elif not delayed_cache or process_all:
            chosen.append(list(range(L)))
        elif commit_mode == COMMIT_EXACT and bool((batch.block_mask[b] == UNMASKED).all()):
            chosen.append(list(range(L)))  # full pass over a finished block: the history later blocks read is clean
        else:
            chosen.append(state.processing_positions())
    return chosen


def _as_mask(positions: list[list[int]], block_length: int) -> torch.Tensor:
    mask = torch.zeros(len(positions), block_length, dtype=torch.bool)
    for b, ps in enumerate(positions):
        mask[b, ps] = True
    return mask


def _prefill(model: SDARReference, padded: list[list[int]], cache: PagedKVCache, block_length: int):
    """Block-causal pass over the padded prompts; returns ``(logits [B, L, V] of each last block,
    kv lengths [B])``."""
    lengths = torch.tensor([len(p) for p in padded], dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        cache.allocator.ensure_capacity(b, n)
    starts = lengths.cumsum(0) - lengths
    step = PagedStep(block_offsets=_page_table(cache, len(padded)), q_start_loc=starts, q_seqlens=lengths,
                     kv_seqlens=lengths, causal_block_size=block_length)
    input_ids = torch.tensor([t for p in padded for t in p], dtype=torch.long)
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()])
    hidden = model.hidden_states(input_ids, positions, cache.caches, step)
    last_rows = (starts + lengths)[:, None] - block_length + torch.arange(block_length)[None, :]
    logits = model.logits(hidden[last_rows.flatten()])  # lm_head on the last blocks only
    return logits.view(len(padded), block_length, -1), lengths


def _ragged_step(page_table: torch.Tensor, history: list[int], rows: list[list[int]], kv_ends: list[int],
                 commits: list[int] = (), block_length: int = 0) -> PagedStep:
    """§2.2: sequences' rows concatenated; keys up to block position ``kv_ends[b]`` (exclusive; history if no rows).

    ``commits`` (COMMIT_FOLDED): sequences whose last committed block is recomputed in this step, each one more
    entry after every block's rows: its ``block_length`` positions before ``history[b]``, keys up to its own end
    (it must not see the new block, as in the commit step it replaces)."""
    L = block_length
    entries = [(b, h, ps, end) for b, (h, ps, end) in enumerate(zip(history, rows, kv_ends))]
    entries += [(b, history[b] - L, list(range(L)), L) for b in commits]
    q_seqlens = torch.tensor([len(ps) for _, _, ps, _ in entries], dtype=torch.long)
    kv = [h + (end if ps else 0) for _, h, ps, end in entries]
    positions = torch.tensor([h + p for _, h, ps, _ in entries for p in ps], dtype=torch.long)
    return PagedStep(block_offsets=page_table[[b for b, _, _, _ in entries]],
                     q_start_loc=q_seqlens.cumsum(0) - q_seqlens, q_seqlens=q_seqlens,
                     kv_seqlens=torch.tensor(kv, dtype=torch.long), kv_positions=positions)


def _dense_logits(row_logits: torch.Tensor, rows: list[list[int]], block_length: int) -> torch.Tensor:
    """``[B, L, V]``: each row's logits at its block slot, NaN elsewhere (a leak would show)."""
    out = row_logits.new_full((len(rows), block_length, row_logits.size(-1)), float('nan'))
    i = 0
    for b, ps in enumerate(rows):
        for p in ps:
            out[b, p] = row_logits[i]
            i += 1
    return out


def _decode_forward(model: SDARReference, batch: _Batch, processing: list[list[int]], cache: PagedKVCache,
                    focus=None, alphas: list[float] | None = None, shadows: list[bool] | None = None):
    """Sparse forward of the processed positions; returns ``(logits [B, L, V], kv lengths [B], positions per
    sequence that reached the logits, new FOCUS progress per sequence or None, FOCUS selection per sequence
    as ``(candidates, chosen, target)`` or None)``.

    ``focus``: anything with ``alpha``, ``policy`` and ``shadow`` (the runtime's ``FocusConfig`` will do);
    ``alphas`` / ``shadows``: per-sequence α and shadow flags instead of those (``--dllm-focus-alpha auto``).
    """
    L, B = batch.block_length, len(processing)
    for b in torch.nonzero(batch.active).flatten().tolist():
        cache.allocator.ensure_capacity(b, int(batch.history[b]) + L)
    history = batch.history.tolist()
    page_table = _page_table(cache, batch.block_ids.size(0))
    # COMMIT_FOLDED: the blocks committed last step, recomputed whole (all layers, no logits) after the blocks' rows
    commits = [b for b in range(B) if batch.commit_pending and batch.commit_pending[b] and bool(batch.active[b])]
    # every query sees the whole block, as in stock decoding (the fork stopped at the rightmost processed
    # position, hiding the decoded tokens right of it: spec §10)
    step = _ragged_step(page_table, history, processing, [L] * B, commits, L)
    block_rows = sum(len(ps) for ps in processing)
    input_ids = torch.tensor([int(batch.block_ids[b, p]) for b, ps in enumerate(processing) for p in ps] +
                             [t for b in commits for t in batch.committed[b][-L:]], dtype=torch.long)
    if focus is None:
        hidden = model.hidden_states(input_ids, step.kv_positions, cache.caches, step)
        row_logits = model.logits(hidden[:block_rows])
        return _dense_logits(row_logits, processing, L), step.kv_seqlens[:B], processing, None, None

    # FOCUS (spec §3): importance at layers 0 and 1 over the masked processed rows (the candidates),
    # eviction inside layer 1 after its K/V write; deeper layers and the LM head see the kept rows only.
    masks = batch.block_mask.tolist()
    row_of = []  # (b, p) of every block row (a folded commit's rows follow them)
    for b, ps in enumerate(processing):
        row_of += [(b, p) for p in ps]
    candidates = [[p for p in ps if masks[b][p] == MASKED] for b, ps in enumerate(processing)]
    candidate_rows = [[i for i, (bb, p) in enumerate(row_of) if bb == b and masks[b][p] == MASKED]
                      for b in range(len(processing))]
    needs_importance = focus.policy == 'importance'
    alphas = alphas or [focus.alpha] * len(processing)
    # shadow mode evicts nothing, auto's shadow sequences or not (as the engine's step does)
    shadows = [bool(focus.shadow) or s for s in (shadows or [False] * len(processing))]
    hidden, positions = model.embed(input_ids), step.kv_positions
    importance0 = None
    kept, progress, selection = processing, None, []
    for layer in range(model.dims.num_layers):
        q, k, v = model.qkv(layer, hidden, positions)
        model.write_kv(layer, k, v, cache.caches, step)
        if layer == 0 and needs_importance:
            importance0 = [focus_spec.importance(q[r], k[r], model.scale) for r in candidate_rows]
        if layer == 1:  # the eviction layer
            kept, progress = [], []
            for b, ps in enumerate(processing):
                state = batch.states[b]
                delta = [0.0] * len(candidates[b])
                if needs_importance:
                    importance1 = focus_spec.importance(q[candidate_rows[b]], k[candidate_rows[b]], model.scale)
                    delta = (importance1 - importance0[b]).tolist()
                count = focus_spec.target(len(candidates[b]), state.decoded_sum, state.decoded_steps, alphas[b],
                                          batch.first_step_average)
                chosen = focus_spec.select(candidates[b], delta, count, state.progress, focus.policy)
                if model.selection_margins is not None:
                    model.selection_margins.append(focus_spec.selection_margin(delta, count, focus.policy))
                selection.append((candidates[b], list(chosen), count, shadows[b]))
                keep = ps if shadows[b] else [p for p in ps if masks[b][p] != MASKED or p in chosen]
                kept.append(keep)
                progress.append(max([state.progress] + keep))
            src = [i for i, (b, p) in enumerate(row_of) if p in kept[b]]
            block_rows = len(src)
            src += list(range(len(row_of), len(row_of) + len(commits) * L))  # a folded commit's rows all go on
            q, hidden, positions = q[src], hidden[src], positions[src]
            # after eviction: keys up to the new progress, the positions whose deep K/V this block has written
            step = _ragged_step(page_table, history, kept, [p + 1 for p in progress], commits, L)
        hidden = model.attend_and_mlp(layer, hidden, q, cache.caches, step)
    return _dense_logits(model.logits(hidden[:block_rows]), kept, L), step.kv_seqlens[:B], kept, progress, selection


def unmasking_margins(logits: torch.Tensor, block_mask: torch.Tensor, fresh: torch.Tensor, active: torch.Tensor,
                      threshold: float) -> list[float]:
    """How clearly a step's unmasking is decided, per active sequence (for prompts_clear_of_ties: the fp32 engine and
    this fp64 loop may split a closer call the other way): over its masked slots with fresh logits, the gap between
    each slot's top two probabilities (greedy sampling), each confidence's distance to the threshold (dynamic), and
    the gaps between neighbouring confidences (the top-k / forced top-1 choice). In log space: the engine's fp32
    error is relative, and random weights give near-uniform probabilities whose absolute gaps are all tiny."""
    top2 = logits.double().log_softmax(-1).topk(2, dim=-1).values
    threshold = math.log(threshold) if threshold > 0 else float('-inf')
    margins = []
    for b in torch.nonzero(active).flatten().tolist():
        slots = (block_mask[b] == MASKED) & fresh[b]
        if not bool(slots.any()):
            continue
        conf = top2[b, slots, 0].sort().values
        margins.append(float((top2[b, slots, 0] - top2[b, slots, 1]).min()))
        margins.append(float((conf - threshold).abs().min()))
        if conf.numel() > 1:
            margins.append(float((conf[1:] - conf[:-1]).min()))
    return margins


def _unmask_fresh_only(processor: UnmaskingProcessor, logits: torch.Tensor, input_ids: torch.Tensor,
                       candidates: torch.Tensor, input_mask: torch.Tensor, fresh: torch.Tensor):
    """§2.2: masked slots without fresh logits are shown to the unmasker as CACHED, then MASKED again.
    Flat ``[B*L]`` layouts; returns ``(next_mask, next_ids)``."""
    hidden = (input_mask == MASKED) & ~fresh
    result = processor(logits, input_ids, candidates, torch.where(hidden, CACHED, input_mask))
    next_mask, next_ids = result if isinstance(result, tuple) else (result, candidates)
    return torch.where(hidden, MASKED, next_mask), next_ids


def _apply_step(batch: _Batch, kind: str, logits: torch.Tensor, kept: list[list[int]], kv_lengths: torch.Tensor,
                processor: UnmaskingProcessor, mask_token_id: int, forwarded: list[list[int]] | None = None,
                focus_progress: list[int] | None = None, selection: list | None = None,
                recomputed: list[bool] | None = None) -> None:
    """Sample, unmask (guarded), update the per-sequence state, then per sequence: record, stop, commit.

    ``recomputed`` (COMMIT_FOLDED): the sequences whose last committed block this step also recomputed."""
    B, L, vocab = logits.shape
    kept_mask = _as_mask(kept, L)
    forwarded_mask = kept_mask if forwarded is None else _as_mask(forwarded, L)
    candidates = logits.argmax(dim=-1)  # greedy sampling (top_k=1)
    next_mask, next_ids = _unmask_fresh_only(processor, logits.view(B * L, vocab), batch.block_ids.flatten(),
                                             candidates.flatten(), batch.block_mask.flatten(), kept_mask.flatten())
    next_mask, next_ids = next_mask.view(B, L), next_ids.view(B, L)

    for b in torch.nonzero(batch.active).flatten().tolist():
        state = batch.states[b]
        block_start = int(batch.history[b])
        is_commit = bool((batch.block_mask[b] == UNMASKED).all())
        decoded = int(((batch.block_mask[b] == MASKED) & (next_mask[b] == UNMASKED)).sum())
        is_warmup = state.needs_warmup
        cached = bool((next_mask[b] == CACHED).all())  # the unmasker committed the block (its commit step)
        # COMMIT_FOLDED: the step that decodes a block's last slot commits it; the next step recomputes it
        folded_commit = batch.folded and bool((next_mask[b] == UNMASKED).all())
        if kind == 'decode':  # prefill leaves the state fresh: the first decode step is a warm-up
            if focus_progress is not None:
                state.progress = focus_progress[b]
            state.after_step(batch.block_mask[b].tolist(), decoded, cached or folded_commit)
            batch.num_steps[b] += 1
            extra = batch.block_length if recomputed and recomputed[b] else 0
            batch.processed_per_step[b].append(int(forwarded_mask[b].sum()) + extra)
            batch.kept_per_step[b].append(int(kept_mask[b].sum()) + extra)
            batch.decoded_per_step[b].append(decoded)
            if selection is not None and batch.selection_per_step is not None:
                batch.selection_per_step[b].append(
                    _selection_counts(selection[b], kept[b], batch.block_mask[b], next_mask[b]))
        if batch.records is not None:
            batch.records[b].append(
                StepRecord(kind=kind, history_length=block_start, input_ids=batch.block_ids[b].clone(),
                           input_mask=batch.block_mask[b].clone(), processed=forwarded_mask[b].clone(),
                           kv_length=int(kv_lengths[b]), logits=logits[b].clone(), next_token_ids=next_ids[b].clone(),
                           next_mask=next_mask[b].clone(), is_warmup=kind == 'decode' and is_warmup,
                           is_commit=is_commit, kept=kept_mask[b].clone() if forwarded is not None else None))
        # still-masked slots carry the mask token again (upstream _update_token_ids_decode)
        batch.block_ids[b] = torch.where(next_mask[b] == MASKED, mask_token_id, next_ids[b])
        batch.block_mask[b] = next_mask[b]
        block_unmasked = bool((next_mask[b] == UNMASKED).all())
        if batch.stops[b].after_step(block_start, batch.block_ids[b].tolist(), block_unmasked):
            batch.active[b] = False
        elif cached or folded_commit:  # committed: history grows, fresh all-mask block
            batch.committed[b] += batch.block_ids[b].tolist()
            batch.history[b] += L
            batch.block_ids[b] = mask_token_id
            batch.block_mask[b] = MASKED
            if folded_commit:
                batch.commit_pending[b] = True


def _selection_counts(selection, kept: list[int], input_mask: torch.Tensor, next_mask: torch.Tensor) -> SelectionCounts:
    candidates, chosen, target, shadow = selection
    decoded = {p for p in candidates if int(input_mask[p]) == MASKED and int(next_mask[p]) == UNMASKED}
    scored = decoded if len(candidates) > target else set()
    hits = len(scored & set(chosen))
    random_expected = len(scored) * len(chosen) / len(candidates) if candidates else 0.0
    return SelectionCounts(candidates=len(candidates), kept_candidates=len(set(kept) & set(candidates)),
                           selected=len(chosen), scored_decoded=len(scored), scored_selected_decoded=hits,
                           scored_random_expected=random_expected, shadow=shadow)


# ---- driver -----------------------------------------------------------------------------------


def reference_generate(model: SDARReference,
                       prompts: list[list[int]],
                       block_length: int,
                       mask_token_id: int,
                       unmasking,
                       max_new_tokens: int | list[int],
                       stop_token_ids: list[int] | None = None,
                       delayed_cache: bool = False,
                       commit_mode: str = COMMIT_FAST,
                       page_size: int = 16,
                       record_steps: bool = False,
                       process_all: bool = False,
                       focus=None,
                       auto_alpha: ReferenceAutoAlpha | None = None) -> list[GenerationResult]:
    """Greedy block-diffusion generation for a batch of prompts (see the module docstring).

    Args:
        model: the reference SDAR.
        prompts: token ids per prompt (must not contain ``mask_token_id``).
        block_length: ``L``.
        mask_token_id: the model's mask token.
        unmasking: ``DLLMConfig``-like (``unmasking_strategy``, ``denoising_steps``,
            ``confidence_threshold``; its ``block_length`` is ignored).
        max_new_tokens: per prompt, or one value for all (>= 1).
        stop_token_ids: tokens that end generation (after the token), checked per finished block.
        delayed_cache: sparse steps over the processing set (spec §2) instead of whole blocks.
        commit_mode: ``'fast'`` or ``'exact'`` commit step under delayed cache (ignored without), or
            ``'folded'`` (delayed cache only): ``'exact'``'s recomputation inside the next block's first step.
        page_size: KV cache page size (pages are handed out in shuffled order).
        record_steps: keep a :class:`StepRecord` per forward and each sequence's final history KV.
        process_all: debug: delayed-cache bookkeeping, but every step forwards the whole block.
        focus: FOCUS eviction (spec §3) on top of delayed cache (requires ``delayed_cache``): anything with
            ``alpha``, ``policy`` (``'importance'`` / ``'leftmost'``) and ``shadow``; with ``auto`` set (a
            ``FocusConfig`` of ``--dllm-focus-alpha auto``) α comes from the controller, per sequence and step.
        auto_alpha: the controller to use under ``auto`` when it should outlive this call (one per engine
            lifetime, e.g. over an evaluation's batches); a fresh one otherwise.
    """
    assert commit_mode in (COMMIT_FAST, COMMIT_EXACT, COMMIT_FOLDED), commit_mode
    assert commit_mode != COMMIT_FOLDED or delayed_cache, 'the folded commit is a delayed-cache step layout'
    assert focus is None or delayed_cache, 'FOCUS evicts from the delayed-cache processing set'
    L = block_length
    B = len(prompts)
    max_new = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
    assert len(max_new) == B and min(max_new) >= 1, 'max_new_tokens must be >= 1 for every prompt'
    assert all(mask_token_id not in p and len(p) > 0 for p in prompts), 'prompts must be non-empty, mask-free'
    processor = UnmaskingProcessor(_unmasking_config(unmasking, L))
    if focus is not None and getattr(focus, 'auto', None) is not None:
        auto_alpha = auto_alpha or ReferenceAutoAlpha(focus, L)
        auto_alpha.join(B)
    elif auto_alpha is not None:
        raise ValueError('auto_alpha is given but focus has no auto configuration')
    padded = [_pad_prompt(p, L, mask_token_id) for p in prompts]
    cache = _new_cache(model, [len(p) for p in padded], max_new, L, page_size)
    stop_ids = frozenset(stop_token_ids or ())

    last_blocks = torch.tensor([p[-L:] for p in padded], dtype=torch.long)
    batch = _Batch(block_ids=last_blocks,
                   block_mask=torch.where(last_blocks == mask_token_id, MASKED, UNMASKED),
                   history=torch.tensor([len(p) - L for p in padded], dtype=torch.long),
                   active=torch.ones(B, dtype=torch.bool),
                   states=[_SeqState(L) for _ in range(B)],
                   committed=[p[:-L] for p in padded],
                   stops=[StopRule(L, len(p), m + len(p) % L, len(p), stop_ids) for p, m in zip(prompts, max_new)],
                   num_steps=[0] * B,
                   processed_per_step=[[] for _ in range(B)],
                   kept_per_step=[[] for _ in range(B)],
                   decoded_per_step=[[] for _ in range(B)],
                   records=[[] for _ in range(B)] if record_steps else None,
                   selection_per_step=[[] for _ in range(B)] if focus is not None else None,
                   first_step_average=focus_spec.first_step_average(unmasking.unmasking_strategy,
                                                                    unmasking.denoising_steps, L),
                   folded=commit_mode == COMMIT_FOLDED,
                   commit_pending=[False] * B)

    logits, kv_lengths = _prefill(model, padded, cache, L)
    _apply_step(batch, 'prefill', logits, [list(range(L))] * B, kv_lengths, processor, mask_token_id)

    # every block takes at most L unmasking steps plus its commit step
    max_steps = (max(max_new) // L + 2) * (L + 1)
    for _ in range(max_steps):
        if not bool(batch.active.any()):
            break
        processing = _decode_processing(batch, delayed_cache, commit_mode, process_all)
        alphas, shadows = auto_alpha.step_settings(batch.active.clone()) if auto_alpha else (None, None)
        running = batch.active.tolist()
        recomputed = [p and a for p, a in zip(batch.commit_pending, running)]
        logits, kv_lengths, kept, progress, selection = _decode_forward(model, batch, processing, cache, focus,
                                                                        alphas, shadows)
        batch.commit_pending = [False] * B  # done in this forward
        if model.selection_margins is not None:  # decisions by a clear margin asked for: the unmasking's too
            model.selection_margins.extend(unmasking_margins(logits, batch.block_mask, _as_mask(kept, L),
                                                             batch.active, unmasking.confidence_threshold))
        _apply_step(batch, 'decode', logits, kept, kv_lengths, processor, mask_token_id, processing, progress,
                    selection, recomputed)
        if auto_alpha:
            auto_alpha.after_step([batch.selection_per_step[b][-1] if running[b] else None for b in range(B)])
    if bool(batch.active.any()):
        raise RuntimeError(f'generation did not finish within {max_steps} steps')

    results = []
    for b in range(B):
        all_ids = batch.committed[b] + batch.block_ids[b].tolist()
        history_len = int(batch.history[b])
        history_kv = None
        if record_steps:
            history_kv = [tuple(t.clone() for t in cache.read(layer, b, history_len))
                          for layer in range(model.dims.num_layers)]
        results.append(
            GenerationResult(token_ids=all_ids[len(prompts[b]):batch.stops[b].valid_end],
                             num_steps=batch.num_steps[b],
                             processed_per_step=batch.processed_per_step[b],
                             kept_per_step=batch.kept_per_step[b],
                             decoded_per_step=batch.decoded_per_step[b],
                             all_token_ids=all_ids,
                             history_length=history_len,
                             steps=batch.records[b] if record_steps else None,
                             selection_per_step=batch.selection_per_step[b] if focus is not None else None,
                             history_kv=history_kv))
    return results
