"""Pure-torch references that define what the project's kernels must compute."""
from .paged_attention import CAUSAL, NON_CAUSAL, block_causal_mask, fill_kv_cache, gather_kv, paged_attention

__all__ = ['CAUSAL', 'NON_CAUSAL', 'block_causal_mask', 'fill_kv_cache', 'gather_kv', 'paged_attention']
