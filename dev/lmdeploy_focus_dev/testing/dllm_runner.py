"""Drive an upstream DLLM model module step by step on CPU, the way the engine's model agent does.

Builds real ``ModelInputs``, lets upstream ``StepContextManager.build_context`` derive the
``StepContext`` (positions, kv lengths, attention metadata via the selected backend), then calls
``prepare_inputs_for_generation`` / ``forward`` / ``get_logits`` like upstream ``model_forward``
(minus CUDA streams and cache checkpoints). Host bookkeeping mirrors the DLLM step loop
(integration notes §1.3): a prompt is padded with the mask token to a multiple of the block length
``L``; its last block is the *current block*; decode steps run the current block of every
sequence (all ``L`` positions, ``is_decoding=True``) over its committed history; committing a
block turns it into history and starts an all-mask block.
"""
import torch
from lmdeploy.messages import QuantPolicy
from lmdeploy.pytorch.config import CacheConfig, ModelConfig
from lmdeploy.pytorch.model_inputs import ModelInputs, StepContext, step_ctx_manager

from lmdeploy_focus_dev.testing.cpu_backend_selector import upstream_on_cpu
from lmdeploy_focus_dev.testing.paged_kv_cache import PagedKVCache


def pad_to_block(prompt: list[int], block_length: int, mask_token_id: int) -> list[int]:
    """Prompt followed by mask tokens up to a multiple of ``block_length`` (a full mask block
    when the prompt already ends on a block boundary, as in upstream ``SchedulerSequenceDLLM``)."""
    num_pad = block_length - len(prompt) % block_length
    return list(prompt) + [mask_token_id] * num_pad


class CpuDLLMRunner:
    """One batch of sequences, their paged KV cache and the model they run through.

    After :meth:`prefill`, ``tokens[b]`` holds sequence ``b``'s committed history followed by its
    current block, and ``history_lengths[b] == len(tokens[b]) - L``.
    """

    def __init__(self, model: torch.nn.Module, model_config: ModelConfig, kv_cache: PagedKVCache):
        self.model = model
        self.model_config = model_config
        self.kv_cache = kv_cache
        self.block_length = model_config.dllm_block_length
        self.mask_token_id = model_config.dllm_mask_token
        # Only block_size and window_size matter on this path; the rest bounds unused engine features.
        self.cache_config = CacheConfig(max_batches=256,
                                        block_size=kv_cache.page_size,
                                        num_cpu_blocks=0,
                                        num_gpu_blocks=kv_cache.num_pages,
                                        device_type='cpu')
        self.tokens: list[list[int]] = []
        self.history_lengths: list[int] = []
        self.last_step_context: StepContext | None = None  # for tests that inspect step metadata

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    def capture_step_graphs(self, batch_buckets: list[int]) -> None:
        """Capture the model's sparse decode step for these batch buckets, as upstream's decode warm-up
        would (on CPU the "graphs" run eagerly on the padded static buffers, so later steps take the
        padded path: batch bucket >= B, row buckets >= the kept rows). A capture writes no K/V (its sequences
        are padding only), so it may come before or after :meth:`prefill`."""
        with upstream_on_cpu(), torch.inference_mode():
            for bucket in sorted(batch_buckets, reverse=True):
                self.model.capture_decode_step(bucket, self.kv_cache.caches, attn_metadata=None)

    # ---- low level: one forward -------------------------------------------------------------

    def forward(self, inputs: ModelInputs) -> torch.Tensor:
        """Run one step; returns fp32 logits ``[num_tokens, vocab]`` (rows as in ``inputs``)."""
        model = self.model
        ctx_mgr = model.ctx_mgr
        with upstream_on_cpu(), torch.inference_mode(), step_ctx_manager(ctx_mgr):
            context = ctx_mgr.build_context(inputs=inputs,
                                            model_config=self.model_config,
                                            cache_config=self.cache_config,
                                            kv_caches=self.kv_cache.caches,
                                            kv_quant_policy=QuantPolicy.NONE)
            self.last_step_context = context
            with ctx_mgr.context(context):
                input_dict = model.prepare_inputs_for_generation(past_key_values=self.kv_cache.caches,
                                                                 context=context)
                output = model(**input_dict)
                hidden_states = output['hidden_states'] if isinstance(output, dict) else output
                logits = model.get_logits(hidden_states)
        return logits.reshape(-1, logits.size(-1)).float()

    def make_inputs(self, input_ids: list[list[int]], history_lengths: list[int], is_decoding: bool) -> ModelInputs:
        """``ModelInputs`` for new tokens ``input_ids[b]`` of every sequence after its history;
        allocates cache pages to cover them."""
        seq_ids = list(range(len(input_ids)))
        for seq_id, ids, history in zip(seq_ids, input_ids, history_lengths):
            self.kv_cache.allocator.ensure_capacity(seq_id, history + len(ids))
        q_lens = [len(ids) for ids in input_ids]
        kv_lens = [h + q for h, q in zip(history_lengths, q_lens)]
        flat_ids = [t for ids in input_ids for t in ids]
        return ModelInputs(input_ids=torch.tensor([flat_ids], dtype=torch.long),
                           seq_length=torch.tensor(q_lens, dtype=torch.long),
                           history_lengths=torch.tensor(history_lengths, dtype=torch.long),
                           block_offsets=self.kv_cache.allocator.page_table(seq_ids),
                           is_decoding=is_decoding,
                           num_ignored_history=torch.zeros(len(input_ids), dtype=torch.long),
                           max_q_seqlen=max(q_lens),
                           max_kv_seqlen=max(kv_lens),
                           sum_kv_seqlen=sum(kv_lens))

    # ---- DLLM step loop ---------------------------------------------------------------------

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Start the batch: each prompt padded to a multiple of ``L`` runs block-causally.

        Returns the logits of every sequence's last (current) block, ``[batch, L, vocab]``.
        """
        assert not self.tokens, 'prefill starts a batch; build a new runner for another one'
        L = self.block_length
        self.tokens = [pad_to_block(p, L, self.mask_token_id) for p in prompts]
        self.history_lengths = [len(t) - L for t in self.tokens]
        inputs = self.make_inputs(self.tokens, [0] * self.batch_size, is_decoding=False)
        logits = self.forward(inputs)
        last_rows = torch.tensor([sum(len(t) for t in self.tokens[:b + 1]) for b in range(self.batch_size)])
        rows = last_rows[:, None] - L + torch.arange(L)[None, :]
        return logits[rows]

    def current_blocks(self) -> torch.Tensor:
        """``[batch, L]`` token ids of every sequence's current block."""
        return torch.tensor([t[h:] for t, h in zip(self.tokens, self.history_lengths)], dtype=torch.long)

    def decode_step(self, block_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One denoising step over the current block of every sequence (all ``L`` positions).

        ``block_token_ids``: ``[batch, L]`` the blocks' tokens for this step (still-masked slots
        carry the mask token); default: the current blocks unchanged. KV of the block is
        (re)written at positions ``history .. history+L-1``. Returns ``[batch, L, vocab]``.
        """
        L = self.block_length
        if block_token_ids is None:
            block_token_ids = self.current_blocks()
        assert tuple(block_token_ids.shape) == (self.batch_size, L)
        blocks = block_token_ids.tolist()
        for b, block in enumerate(blocks):
            self.tokens[b][self.history_lengths[b]:] = block
        inputs = self.make_inputs(blocks, self.history_lengths, is_decoding=True)
        return self.forward(inputs).view(self.batch_size, L, -1)

    def commit_blocks(self, seq_indices: list[int] | None = None) -> None:
        """Turn the current block of ``seq_indices`` (default all) into history and start a fresh
        all-mask block (upstream: the block became CACHED)."""
        L = self.block_length
        for b in range(self.batch_size) if seq_indices is None else seq_indices:
            self.history_lengths[b] += L
            self.tokens[b] += [self.mask_token_id] * L
