"""Torch implementations of the kernels: the CPU path of the runtime and the fallback wherever the
Triton kernels (``kernels/cuda``) do not run. The kernel tests hold the two to the same results."""
from .paged_attention import CAUSAL, NON_CAUSAL, block_causal_mask, fill_kv_cache, gather_kv, paged_attention

__all__ = ['CAUSAL', 'NON_CAUSAL', 'block_causal_mask', 'fill_kv_cache', 'gather_kv', 'paged_attention']
