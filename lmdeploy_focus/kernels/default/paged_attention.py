"""Paged-KV attention and KV fill in plain torch: the definition of what the project's attention
kernels must compute, and their fallback off CUDA.

Used as (1) the CPU path of ``kernels/paged_ops.py`` (the model's delayed-cache attention), (2) the
expected output in kernel tests (ragged paged attention, sparse KV fill), (3) the CPU attention of
the development package's test harness (``lmdeploy_focus_dev.testing.cpu_backend``).
Readability over speed: vectorised per sequence, Python loop over sequences only.

Layouts (same as LMDeploy's PyTorch engine with ``quant_policy == 0``):

* paged cache ``k_cache`` / ``v_cache``: ``[num_pages, page_size, kv_heads, head_dim]``;
* page table ``block_offsets``: ``[batch, max_pages_per_seq]`` (int); token ``t`` of sequence
  ``b`` lives at ``cache[block_offsets[b, t // page_size], t % page_size]``;
* ragged tokens: new tokens of all sequences concatenated, ``[num_tokens, heads, head_dim]``;
  sequence ``b`` owns rows ``q_start_loc[b] : q_start_loc[b] + q_seqlens[b]``;
* ``kv_seqlens[b]``: number of keys (positions ``0 .. kv_len-1``) sequence ``b`` attends to.
"""
import torch

# Values for ``causal_block_size`` of :func:`paged_attention`.
NON_CAUSAL = None  # every query sees all kv_len keys (DLLM decode)
CAUSAL = 1  # block-causal with blocks of one token == plain causal (AR)


def _token_seq_index(q_seqlens: torch.Tensor, num_tokens: int, q_start_loc: torch.Tensor):
    """Locate every ragged token row that belongs to a sequence.

    Returns ``(seq_idx, rank, rows)``, each ``[num_valid_tokens]`` long: the owning sequence, the
    rank inside that sequence's rows, and the row index into the token dimension. Rows covered
    by no sequence (padding) are omitted.
    """
    device = q_seqlens.device
    q_seqlens = q_seqlens.long()
    seq_idx = torch.repeat_interleave(torch.arange(q_seqlens.numel(), device=device), q_seqlens)
    first_row_of_token = torch.repeat_interleave(q_seqlens.cumsum(0) - q_seqlens, q_seqlens)
    rank = torch.arange(seq_idx.numel(), device=device) - first_row_of_token
    rows = q_start_loc.long()[seq_idx] + rank
    assert rows.numel() == 0 or int(rows.max()) < num_tokens, 'q_start_loc/q_seqlens exceed token count'
    return seq_idx, rank, rows


def page_slots(block_offsets: torch.Tensor, seq_idx: torch.Tensor, positions: torch.Tensor, page_size: int):
    """(page, slot) in the paged cache of token ``positions`` of sequences ``seq_idx``
    (both ``[n]``, long)."""
    pages = block_offsets[seq_idx, positions // page_size].long()
    return pages, positions % page_size


def fill_kv_cache(k: torch.Tensor,
                  v: torch.Tensor,
                  k_cache: torch.Tensor,
                  v_cache: torch.Tensor,
                  block_offsets: torch.Tensor,
                  q_start_loc: torch.Tensor,
                  q_seqlens: torch.Tensor,
                  kv_seqlens: torch.Tensor,
                  positions_in_seq: torch.Tensor | None = None) -> None:
    """Write new K/V rows into the paged cache (in place).

    Args:
        k, v: ``[num_tokens, kv_heads, head_dim]`` (``v`` may have its own head_dim), ragged
            rows as described in the module docstring.
        k_cache, v_cache: ``[num_pages, page_size, kv_heads, head_dim]``.
        block_offsets: ``[batch, max_pages_per_seq]`` page table.
        q_start_loc, q_seqlens, kv_seqlens: ``[batch]``.
        positions_in_seq: optional ``[num_tokens]`` position of every row inside its sequence.
            Default (AR / upstream DLLM): the rows of sequence ``b`` are its last ``q_len``
            positions, ``kv_len - q_len + i``. Given explicitly, rows go to arbitrary positions
            (sparse fill of the delayed cache, where only some block positions are recomputed).
    """
    page_size = k_cache.size(1)
    seq_idx, rank, rows = _token_seq_index(q_seqlens, k.size(0), q_start_loc)
    if positions_in_seq is None:
        positions = kv_seqlens.long()[seq_idx] - q_seqlens.long()[seq_idx] + rank
    else:
        positions = positions_in_seq.long()[rows]
    assert positions.numel() == 0 or int(positions.min()) >= 0, 'negative cache position'
    pages, slots = page_slots(block_offsets, seq_idx, positions, page_size)
    k_cache[pages, slots] = k[rows].to(k_cache.dtype)
    v_cache[pages, slots] = v[rows].to(v_cache.dtype)


def gather_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, page_table_row: torch.Tensor, kv_len: int):
    """Keys/values ``0 .. kv_len-1`` of one sequence, read through its page table row.

    Returns ``(k, v)``, each ``[kv_len, kv_heads, head_dim]`` in the cache dtype.
    """
    page_size = k_cache.size(1)
    positions = torch.arange(kv_len, device=k_cache.device)
    pages = page_table_row[positions // page_size].long()
    slots = positions % page_size
    return k_cache[pages, slots], v_cache[pages, slots]


def block_causal_mask(q_positions: torch.Tensor, kv_len: int, causal_block_size: int | None) -> torch.Tensor:
    """``[q_len, kv_len]`` bool, True where query (absolute position) may see the key.

    A query at position ``p`` sees key ``t`` iff ``t // L <= p // L`` (``L = causal_block_size``;
    ``L == 1`` is plain causal); ``None`` lets every query see every key.
    """
    keys = torch.arange(kv_len, device=q_positions.device)
    if causal_block_size is None:
        return torch.ones(q_positions.numel(), kv_len, dtype=torch.bool, device=q_positions.device)
    return (keys[None, :] // causal_block_size) <= (q_positions[:, None] // causal_block_size)


def paged_attention(q: torch.Tensor,
                    k_cache: torch.Tensor,
                    v_cache: torch.Tensor,
                    block_offsets: torch.Tensor,
                    q_start_loc: torch.Tensor,
                    q_seqlens: torch.Tensor,
                    kv_seqlens: torch.Tensor,
                    scale: float,
                    causal_block_size: int | None = NON_CAUSAL) -> torch.Tensor:
    """Attention of ragged queries over each sequence's paged keys ``0 .. kv_len-1``.

    Args:
        q: ``[num_tokens, heads, head_dim]``; sequence ``b`` owns rows
            ``q_start_loc[b] : q_start_loc[b] + q_seqlens[b]`` (``q_len`` may be 0).
            Query ``i`` of sequence ``b`` has absolute position ``kv_len - q_len + i``.
        k_cache, v_cache: ``[num_pages, page_size, kv_heads, head_dim]``; GQA: query head ``h``
            reads kv head ``h // (heads // kv_heads)``.
        block_offsets: ``[batch, max_pages_per_seq]`` page table.
        q_start_loc, q_seqlens, kv_seqlens: ``[batch]``; requires ``q_len <= kv_len``.
        scale: softmax scale applied to ``q·k``.
        causal_block_size: ``None`` non-causal (DLLM decode), ``1`` causal (AR),
            ``L`` block-causal (SDAR prefill, block length ``L``).

    Returns:
        ``[num_tokens, heads, v_head_dim]`` in ``q.dtype`` (computed in fp32); rows that belong
        to no sequence are zero.
    """
    num_tokens, num_heads, _ = q.shape
    num_kv_heads = k_cache.size(2)
    assert num_heads % num_kv_heads == 0, 'query heads must be a multiple of kv heads'
    group = num_heads // num_kv_heads
    out = q.new_zeros(num_tokens, num_heads, v_cache.size(-1))
    for b, (start, q_len, kv_len) in enumerate(zip(q_start_loc.tolist(), q_seqlens.tolist(), kv_seqlens.tolist())):
        if q_len == 0:
            continue
        assert q_len <= kv_len, f'sequence {b}: q_len {q_len} > kv_len {kv_len}'
        k, v = gather_kv(k_cache, v_cache, block_offsets[b], kv_len)
        # GQA: repeat each kv head for its group of query heads -> [heads, kv_len, dim]
        k = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
        v = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        q_b = q[start:start + q_len].float().transpose(0, 1)  # [heads, q_len, dim]
        scores = torch.matmul(q_b, k.transpose(1, 2)) * scale  # [heads, q_len, kv_len]
        q_positions = torch.arange(kv_len - q_len, kv_len, device=q.device)
        visible = block_causal_mask(q_positions, kv_len, causal_block_size)
        scores = scores.masked_fill(~visible, float('-inf'))
        probs = torch.softmax(scores, dim=-1)
        out[start:start + q_len] = torch.matmul(probs, v).transpose(0, 1).to(out.dtype)
    return out
