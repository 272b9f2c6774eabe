"""Upstream's model-agent lifecycle on the tiny CPU model, with requests joining, leaving and aborting at random.

Drives the plugin's real ``DelayedCacheStepInputs``, runtime, agent strategy and ``StepGraphs`` (padded buckets or
eager) through upstream's own step-input calls in the engine's order: ``reindex`` (the batch after this step's
leavers, possibly reordered) → forward → row sampling → guarded unmasking → ``step_decode``, and ``merge_prefill``
after a prefill. The harness stands in for the scheduler and the KV pages. Every decode step also checks the
guard: logits only for MASKED slots of the batch's own rows, and nothing decoded without fresh logits.

``tests/test_batch_lifecycle.py`` holds every request's committed blocks to the same request decoded alone.
"""
import random
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from lmdeploy.pytorch import consts
from lmdeploy.pytorch.engine.logits_process import SamplingInputs, SamplingInputsDelta
from lmdeploy.pytorch.model_inputs import ModelInputs, ModelInputsDelta
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs, DLLMExtraOutputs

from lmdeploy_focus.config.options import OPTIONS_KEY
from lmdeploy_focus.strategies.dllm.delayed_cache_agent import DelayedCacheAgentStrategy
from lmdeploy_focus.strategies.dllm.delayed_cache_step_inputs import DelayedCacheStepInputs
from lmdeploy_focus.strategies.dllm.upstream_fixes import PaddingSafeDLLMStoppingCriteria

from .dllm_runner import pad_to_block

MASKED, UNMASKED, CACHED = consts.DLLM_MASKED, consts.DLLM_UNMASKED, consts.DLLM_CACHED


@dataclass(frozen=True)
class Request:
    rid: int
    prompt: list
    blocks: int  # committed blocks it asks for


class LifecycleSim:
    """One engine: a batch in step-input order, each request's committed blocks (``outputs``)."""

    def __init__(self, tiny, unmasking, padded: bool, buckets=(8, 4, 2, 1), stock_step_rows: int = 0):
        self.model = tiny.model
        self.runtime = tiny.model.delayed_cache_runtime
        self.block_length = self.runtime.block_length
        self.mask_id = tiny.model_config.dllm_mask_token
        self.agent = DelayedCacheAgentStrategy(unmasking, self.mask_id, self.runtime)
        self.runner = tiny.new_runner(page_size=16, num_pages=256)
        self.pages = self.runner.kv_cache.allocator
        self.model.step_graphs.reset()
        if padded:
            self.runner.capture_step_graphs(list(buckets))
        self.inputs = DelayedCacheStepInputs(_block_size=self.block_length, _dllm_mask_token=self.mask_id,
                                             tracks_focus=self.runtime.focus is not None)  # as the factory sets it
        self.runtime.stock_step_rows = stock_step_rows  # as the factory: the runtime's rule, read by the step inputs
        self.inputs.stock_rule = self.runtime.stock_batch
        focus = self.runtime.focus
        if focus is not None and focus.auto is not None:  # --dllm-focus-alpha auto: the shadow schedule, as the factory
            self.inputs.shadow_period = focus.shadow_every
        self.joined = {}  # request id -> its index in the engine's join order (the shadow schedule's phase)
        self.runtime.step_inputs = self.inputs
        self.runtime.end_step()
        self.batch = []  # request ids in step-input order
        self.wanted = {}  # request id -> committed blocks it asks for
        self.outputs = {}  # request id -> committed blocks so far
        self.decoded_checked = 0  # tokens the guard check saw decoded
        self.modes = set()  # (batch size, whether the step ran sync-free) of every delayed-cache decode step
        self.stock_batches = set()  # batch sizes of the decode steps that ran as upstream's stock step
        self.kinds = {}  # request id -> 'stock' / 'delayed' of each of its decode steps, in order
        self.after_stock = []  # rows into layer 0 per sequence of each delayed-cache step that followed stock steps

    def live(self) -> list:
        return [r for r in self.batch if len(self.outputs[r]) < self.wanted[r]]

    def prefill(self, requests: list) -> None:
        """New requests join: upstream's prefill forward, its unmasking, then ``merge_prefill``."""
        L = self.block_length
        self._reindex(self.live())
        tokens = [pad_to_block(r.prompt, L, self.mask_id) for r in requests]
        ids = [r.rid for r in requests]
        for rid, t in zip(ids, tokens):
            self.pages.ensure_capacity(rid, len(t) + L)
        lengths = [len(t) for t in tokens]
        inputs = ModelInputs(input_ids=torch.tensor([[x for t in tokens for x in t]]),
                             seq_length=torch.tensor(lengths), history_lengths=torch.zeros(len(ids), dtype=torch.long),
                             block_offsets=self.pages.page_table(ids), is_decoding=False,
                             num_ignored_history=torch.zeros(len(ids), dtype=torch.long), max_q_seqlen=max(lengths),
                             max_kv_seqlen=max(lengths), sum_kv_seqlen=sum(lengths))
        logits = self.runner.forward(inputs)
        assert torch.isfinite(logits).all(), 'non-finite prefill logits'
        ends = torch.tensor(lengths).cumsum(0)
        last_rows = (ends[:, None] - L + torch.arange(L)[None]).flatten()  # each prompt's last block
        last_ids = torch.tensor([x for t in tokens for x in t[-L:]])
        mask = torch.where(last_ids == self.mask_id, MASKED, UNMASKED).to(torch.uint8)
        batch = len(ids)
        prefill = SimpleNamespace(input_ids=last_ids, seq_length=torch.full((batch, ), L))
        next_ids, extra = self.agent.post_sampling(prefill, logits[last_rows], logits[last_rows].argmax(-1),
                                                   DLLMExtraInputs(dllm_mask=mask.clone()))
        criteria = PaddingSafeDLLMStoppingCriteria(num_appendable_ids=torch.full((batch, ), 10**6),
                                                   output_start_pos=torch.tensor(lengths))
        delta = SamplingInputsDelta(num_ignore_eos=torch.zeros(batch * L, dtype=torch.long),
                                    random_offsets=torch.zeros(batch * L, dtype=torch.long), all_ids=None)
        self.inputs.merge_prefill(inputs, extra, criteria, delta, next_ids, None,
                                  DLLMExtraOutputs(dllm_mask=extra.dllm_mask))
        self.batch += ids
        for r in requests:
            self.outputs[r.rid], self.wanted[r.rid] = [], r.blocks
            self.joined[r.rid] = len(self.joined)
        self.check_state()

    def check_state(self) -> None:
        """Every per-sequence state tensor holds the batch's sequences, no more, no fewer."""
        inputs, batch = self.inputs, len(self.batch)
        sizes = dict(upstream=inputs.model_inputs.seq_length.numel(), delayed=inputs.delayed_state.batch_size)
        if inputs.focus_state is not None:
            sizes['focus'] = inputs.focus_state.batch_size
        if inputs.shadow_countdown is not None:
            sizes['shadow'] = inputs.shadow_countdown.numel()
        assert set(sizes.values()) == {batch}, f'state sizes {sizes} for a batch of {batch}'

    def _reindex(self, keep: list) -> None:
        """Upstream's decode delta (indices on the device and on the host, as upstream sends them): the batch cut
        (and ordered) to ``keep``; most steps keep it as it is."""
        if not self.batch:
            return
        L = self.block_length
        index = [self.batch.index(r) for r in keep]
        history = self.inputs.model_inputs.history_lengths
        kv = [int(history[i]) + 2 * L for i in index] or [0]
        self.inputs.reindex(ModelInputsDelta(indices=torch.tensor(index, dtype=torch.long),
                                             block_offsets=self.pages.page_table(keep), indice_cpu=np.array(index),
                                             max_q_seqlen=L, max_kv_seqlen=max(kv), sum_kv_seqlen=sum(kv),
                                             num_ignored_history=torch.zeros(len(index), dtype=torch.long)))
        self.batch = list(keep)

    def decode(self, abort=(), shuffle: random.Random | None = None) -> None:
        """One decode step of the live requests less ``abort`` (reordered when ``shuffle`` is given)."""
        L = self.block_length
        keep = [r for r in self.live() if r not in abort]
        if shuffle is not None:
            shuffle.shuffle(keep)
        self._reindex(keep)
        if not self.batch:
            return
        batch, model_inputs = len(self.batch), self.inputs.model_inputs
        history = model_inputs.history_lengths
        for rid, h in zip(self.batch, history.tolist()):
            self.pages.ensure_capacity(rid, h + L)
        inputs = ModelInputs(input_ids=model_inputs.input_ids, seq_length=torch.full((batch, ), L),
                             history_lengths=history, block_offsets=self.pages.page_table(self.batch), is_decoding=True,
                             num_ignored_history=torch.zeros(batch, dtype=torch.long), max_q_seqlen=L,
                             max_kv_seqlen=int(history.max()) + L, sum_kv_seqlen=int(history.sum()) + batch * L)
        stale = self.inputs.state_stale
        logits = self.runner.forward(inputs)
        assert torch.isfinite(logits).all(), 'non-finite decode logits'
        stock = self.inputs.stock_step(batch)
        assert (self.runtime.step is None) == stock, f'B={batch}: stock step {stock}, delayed-cache step ran ' \
                                                      f'{self.runtime.step is not None}'
        for rid in self.batch:
            self.kinds.setdefault(rid, []).append('stock' if stock else 'delayed')
        logits, _ = self.agent.sampling_rows(logits, SamplingInputs(batch_size=batch * L, max_num_logprobs=-1))
        in_mask = self.inputs.extra_inputs.dllm_mask.clone()
        has_logits = torch.zeros(batch * L, dtype=torch.bool)
        if stock:
            self.stock_batches.add(batch)
            has_logits[:] = True  # upstream's step: logits at every slot
        else:
            self.modes.add((batch, self.runtime.step.sync_free))
            if stale:
                self.after_stock.append(self.runtime.step.processed_per_seq.tolist())
        if stock:
            pass  # upstream's unmasker on upstream's logits
        elif self.runtime.step.sync_free:  # logits at every slot; fresh ones at the processed masked slots only
            has_logits = self.runtime.step.fresh.flatten() & (in_mask == MASKED)
        elif self.runtime.step.num_logit_rows > 0:
            slots = self.runtime.logit_slots
            assert int(slots.max()) < batch * L and (in_mask[slots] == MASKED).all(), 'logits of a non-MASKED slot'
            assert slots.unique().numel() == slots.numel(), 'a slot with two logit rows'
            has_logits[slots] = True
        next_ids, extra = self.agent.post_sampling(SimpleNamespace(input_ids=model_inputs.input_ids, is_decoding=True,
                                                                   seq_length=inputs.seq_length),
                                                   logits,
                                                   logits.argmax(-1), DLLMExtraInputs(dllm_mask=in_mask.clone()))
        decoded = (in_mask == MASKED) & (extra.dllm_mask == UNMASKED)
        assert not (decoded & ~has_logits).any(), 'a slot without fresh logits was decoded'
        self.decoded_checked += int(decoded.sum())
        committed = (extra.dllm_mask.view(batch, L) == CACHED).all(1)
        for b, rid in enumerate(self.batch):
            if committed[b]:
                self.outputs[rid].append(next_ids.view(batch, L)[b].tolist())
        self.inputs.step_decode(model_inputs, extra, self.inputs.stopping_criteria, self.inputs.sampling_delta, next_ids,
                                None, None)
        self.check_state()


def lifecycle_model(block_length: int, strategy: str, alpha, commit: str = 'exact'):
    """The tiny 3-layer SDAR with delayed cache (and FOCUS at ``alpha``; None: delayed cache alone) and the unmasking
    settings of these lifecycles (``denoising_steps`` L/2, confidence threshold 0.3)."""
    from lmdeploy.pytorch.config import DLLMConfig, UnmaskingStrategy
    from .families import tiny_model_and_reference
    unmasking = DLLMConfig(block_length=block_length, unmasking_strategy=UnmaskingStrategy.from_str(strategy),
                           denoising_steps=block_length // 2, confidence_threshold=0.3)
    options = {'enable_delayed_cache': True, 'delayed_cache_commit': commit}
    if alpha is not None:
        options.update(enable_focus=True, focus_alpha=alpha)
    tiny, _ = tiny_model_and_reference('sdar', block_length, num_layers=3, hf_overrides={OPTIONS_KEY: options},
                                       dllm_config=unmasking)
    return tiny, unmasking


def decode_alone(tiny, unmasking, padded: bool, request: Request, max_steps: int = 400, kinds=None) -> list:
    """``request``'s committed blocks when it is the only one in the engine; ``kinds`` ('stock' / 'delayed' per decode
    step): force each step's kind, as the batch sizes it met in a shared engine did (``LifecycleSim.kinds``)."""
    sim = LifecycleSim(tiny, unmasking, padded)
    sim.prefill([request])
    for step in range(max_steps):
        if not sim.live() or (kinds is not None and step == len(kinds)):  # an aborted request's steps end early
            break
        if kinds is not None:  # a batch of one runs stock steps iff its rows fit (stock_step_rows = L), else never
            sim.runtime.stock_step_rows = sim.block_length if kinds[step] == 'stock' else 0
        sim.decode()
    return sim.outputs[request.rid]


def decode_batched(tiny, unmasking, padded: bool, requests: list, rng: random.Random, aborting: set,
                   max_steps: int = 2000, stock_step_rows: int = 0, start: int = 3) -> tuple[dict, LifecycleSim]:
    """Every request's committed blocks when they share the engine: ``start`` start together, the rest join 1-3 at a
    time at random steps (or as soon as none is left), those in ``aborting`` may be aborted at any step, the batch is reordered now and then."""
    sim = LifecycleSim(tiny, unmasking, padded, stock_step_rows=stock_step_rows)
    queue = list(requests)
    sim.prefill([queue.pop(0) for _ in range(min(start, len(queue)))])
    for _ in range(max_steps):
        if not queue and not sim.live():
            break
        if queue and (rng.random() < 0.25 or not sim.live()):
            sim.prefill([queue.pop(0) for _ in range(rng.randint(1, min(3, len(queue))))])
            continue
        abort = tuple(r for r in sim.live() if r in aborting and rng.random() < 0.15)
        sim.decode(abort=abort, shuffle=rng if rng.random() < 0.2 else None)
    return sim.outputs, sim
