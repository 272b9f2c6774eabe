"""FOCUS importance: attention mass each masked candidate receives from its sequence's candidates.

Semantics: ``lmdeploy_focus.kernels.default.focus.masked_importance`` (spec §3.2).

One program per (sequence, KV head) loops over the query heads of that KV group and sums the
column sums in registers; the ``Hkv`` partial rows are then summed by one torch reduction. The
result is deterministic, with no float atomics and a workspace of ``Hkv x N`` floats (the
reference fork used atomics and a ``B x H x L x L`` workspace, spec §4.1 / §10). The loop bound is
a compile-time constant (the group size): Triton's interpreter cannot loop over a runtime
bound, and the CPU tests run this kernel there.

A sequence has at most ``L`` rows, which fit one ``BLOCK_L`` tile: the program loads them in row
order and masks non-candidates instead of compacting them. The max-pool in candidate order then
needs, per key column ``j``, the previous / next candidate row; their indices come from an
``L x L`` comparison in registers, and their logits from two more dot products against K rows
loaded at those indices (no shifted register access, no store→load round trip).
"""
import torch
import triton
import triton.language as tl

from ...config.compat import MAX_FOCUS_BLOCK_LENGTH, MAX_FOCUS_TILE_BYTES, focus_tile_bytes


@triton.jit
def _load_keys_t(k_ptr, key_rows, key_ok, kv_head, stride_kt, stride_kh, stride_kd, HEAD_DIM: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    """K rows ``key_rows`` of one KV head, transposed to [BLOCK_D, BLOCK_L] for the score dot."""
    dims = tl.arange(0, BLOCK_D)
    return tl.load(k_ptr + key_rows[None, :] * stride_kt + kv_head * stride_kh + dims[:, None] * stride_kd,
                   mask=key_ok[None, :] & (dims[:, None] < HEAD_DIM),
                   other=0.0)


@triton.jit
def _logits(q, k_t, key_ok, scale):
    """``q . k * scale`` in fp32 ([BLOCK_L, BLOCK_L]); keys not ok give -inf."""
    # "ieee": fp32 inputs must not go through TF32; 16-bit inputs ignore it (exact products, fp32 sums).
    logits = tl.dot(q, k_t, input_precision='ieee') * scale
    return tl.where(key_ok[None, :], logits, float('-inf'))


@triton.jit
def _masked_importance_kernel(
        q_ptr, k_ptr, q_start_loc_ptr, q_seqlens_ptr, candidate_ptr, out_ptr,
        scale, stride_ot,
        stride_qt, stride_qh, stride_qd, stride_kt, stride_kh, stride_kd,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """Program (b, kv head): attention received by every row of sequence b from that KV group's heads."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    start = tl.load(q_start_loc_ptr + seq).to(tl.int64)
    length = tl.load(q_seqlens_ptr + seq)
    slot = tl.arange(0, BLOCK_L)
    in_seq = slot < length
    rows = start + slot
    cand = in_seq & (tl.load(candidate_ptr + rows, mask=in_seq, other=0) != 0)

    # Neighbours in candidate order: [j, k] pairs, k ranging over the candidates.
    cand_k = cand[None, :]
    prev_slot = tl.max(tl.where(cand_k & (slot[None, :] < slot[:, None]), slot[None, :], -1), axis=1)
    next_slot = tl.min(tl.where(cand_k & (slot[None, :] > slot[:, None]), slot[None, :], BLOCK_L), axis=1)
    has_prev = cand & (prev_slot >= 0)
    has_next = cand & (next_slot < BLOCK_L)

    # The keys of this KV head, as they are and shifted to each column's previous / next candidate.
    k_here = _load_keys_t(k_ptr, rows, cand, kv_head, stride_kt, stride_kh, stride_kd, HEAD_DIM, BLOCK_D)
    k_prev = _load_keys_t(k_ptr, start + tl.where(has_prev, prev_slot, 0), has_prev, kv_head, stride_kt, stride_kh,
                          stride_kd, HEAD_DIM, BLOCK_D)
    k_next = _load_keys_t(k_ptr, start + tl.where(has_next, next_slot, 0), has_next, kv_head, stride_kt, stride_kh,
                          stride_kd, HEAD_DIM, BLOCK_D)

    dims = tl.arange(0, BLOCK_D)
    q_mask = cand[:, None] & (dims[None, :] < HEAD_DIM)
    received = tl.zeros([BLOCK_L], dtype=tl.float32)
    for member in range(GROUP):
        head = kv_head * GROUP + member
        q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + dims[None, :] * stride_qd,
                    mask=q_mask,
                    other=0.0)
        pooled = tl.maximum(_logits(q, k_here, cand, scale), _logits(q, k_prev, has_prev, scale))
        pooled = tl.maximum(pooled, _logits(q, k_next, has_next, scale))
        # Softmax over candidate keys; query rows that are not candidates contribute nothing.
        pooled = tl.where(cand[:, None], pooled, float('-inf'))
        # (rows of no candidate query are all -inf: give them max 0 and sum 1, so p = 0, no NaN)
        row_max = tl.where(cand, tl.max(pooled, axis=1), 0.0)
        p = tl.exp(pooled - row_max[:, None])
        row_sum = tl.where(cand, tl.sum(p, axis=1), 1.0)
        received += tl.sum(p / row_sum[:, None], axis=0)
    tl.store(out_ptr + kv_head * stride_ot + rows, tl.where(cand, received, 0.0), mask=in_seq)


# The query tile and the three key tiles of a program are dot operands in shared memory: 4 x L x d elements. At
# MAX_FOCUS_TILE_BYTES (32 KiB: L 128 x d 128 in 16 bits, or L 64 in fp32) the kernel compiles for sm_90 to 128 KiB
# (fp32: 161 KiB with its layout scratch); twice that (L 256 in 16 bits: 256 KiB, L 128 in fp32: 322 KiB) exceeds the
# 227 KiB a Hopper GPU gives a block, and Triton then raised OutOfResources at the first launch.


def cuda_masked_importance(q: torch.Tensor, k: torch.Tensor, q_start_loc: torch.Tensor, q_seqlens: torch.Tensor,
                           candidate: torch.Tensor, scale: float, max_q_len: int) -> torch.Tensor:
    """float32 [N] importance (see the reference); no host sync.

    Args:
        q: ``[N, H, d]``, k: ``[N, Hkv, d]`` (any strides, fp16 / bf16 / fp32; logits in fp32).
        q_start_loc, q_seqlens: ``[B]`` int; ``q_seqlens <= max_q_len`` (longer sequences are
            silently cut at ``max_q_len`` rows: the bound is static so the launch never syncs).
        candidate: bool ``[N]``.
        max_q_len: static bound of ``q_seqlens`` (the block length ``L``).
    """
    num_rows, num_heads, head_dim = q.shape
    num_kv_heads = k.size(1)
    assert k.shape == (num_rows, num_kv_heads, head_dim), 'k must be [N, Hkv, d] with q\'s N and d'
    assert num_heads % num_kv_heads == 0, 'query heads must be a multiple of KV heads'
    assert candidate.shape == (num_rows, ), 'one candidate flag per row'
    assert q_start_loc.is_contiguous() and q_seqlens.is_contiguous() and candidate.is_contiguous()
    block_l = max(16, triton.next_power_of_2(max_q_len))  # tl.dot needs >= 16 per side
    if focus_tile_bytes(block_l, head_dim, q.element_size()) > MAX_FOCUS_TILE_BYTES:
        raise ValueError(f'FOCUS importance: a block of {max_q_len} rows with {head_dim}-dim {q.dtype} heads needs '
                         f'more GPU shared memory than a program gets (tiles of {block_l} x {head_dim}, at most '
                         f'{MAX_FOCUS_TILE_BYTES // 1024} KiB each); FOCUS runs blocks up to '
                         f'{MAX_FOCUS_BLOCK_LENGTH} with 16-bit heads of 128')
    # Per KV head partial sums; rows no program writes (padding) stay 0.
    partial = torch.zeros(num_kv_heads, num_rows, dtype=torch.float32, device=q.device)
    batch_size = q_seqlens.numel()
    if num_rows == 0 or batch_size == 0:
        return partial.sum(0)
    _masked_importance_kernel[(batch_size, num_kv_heads)](
        q, k, q_start_loc, q_seqlens, candidate, partial,
        float(scale), partial.stride(0),
        *q.stride(), *k.stride(),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_L=block_l,
        # H100, 32 / 8 heads, d 128, B 8..256: 2 warps best up to L 32 (57 vs 78 us at B 256),
        # 4 at L 64 (134 vs 306 us)
        num_warps=2 if block_l <= 32 else 4)
    return partial.sum(0)  # fixed order over KV heads: deterministic
