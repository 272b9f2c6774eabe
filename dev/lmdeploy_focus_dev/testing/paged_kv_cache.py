"""CPU paged KV cache for model tests: per-layer cache tensors plus a tiny page allocator.

Stands in for upstream's ``CacheEngine`` (GPU memory) and block manager (scheduler) so that a
model's ``past_key_values`` and the step's ``block_offsets`` can be built by hand on CPU.
"""
import torch

from lmdeploy_focus.kernels.default.paged_attention import gather_kv


class PageAllocator:
    """Hands out cache pages to sequences and builds the page table (``block_offsets``).

    Free pages are handed out in a shuffled order so that a sequence's pages are not contiguous,
    which is what exercises page-table lookups in tests.
    """

    def __init__(self, num_pages: int, page_size: int, seed: int = 0):
        self.page_size = page_size
        # on the CPU generator's device even when a default-device context puts the cache on CUDA
        order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed), device='cpu')
        self._free = order.tolist()
        self._pages: dict[int, list[int]] = {}

    def ensure_capacity(self, seq_id: int, num_tokens: int) -> None:
        """Give ``seq_id`` enough pages to hold positions ``0 .. num_tokens-1``."""
        pages = self._pages.setdefault(seq_id, [])
        needed = -(-num_tokens // self.page_size) - len(pages)
        if needed > len(self._free):
            raise RuntimeError(f'out of cache pages: need {needed}, {len(self._free)} free')
        for _ in range(max(needed, 0)):
            pages.append(self._free.pop())

    def pages_of(self, seq_id: int) -> list[int]:
        return list(self._pages.get(seq_id, []))

    def page_table(self, seq_ids: list[int]) -> torch.Tensor:
        """``[len(seq_ids), max_pages]`` int32; unused entries are 0 (never read: kv_len bounds)."""
        rows = [self._pages.get(s, []) for s in seq_ids]
        width = max([len(r) for r in rows] + [1])
        table = torch.zeros(len(rows), width, dtype=torch.int32)
        for i, row in enumerate(rows):
            table[i, :len(row)] = torch.tensor(row, dtype=torch.int32)
        return table


class PagedKVCache:
    """Per-layer ``(k_cache, v_cache)``, each ``[num_pages, page_size, kv_heads, head_dim]``.

    ``caches`` is what upstream models take as ``past_key_values`` (a list indexed by layer).
    """

    def __init__(self,
                 num_layers: int,
                 num_pages: int,
                 page_size: int,
                 num_kv_heads: int,
                 head_dim: int,
                 v_head_dim: int | None = None,
                 dtype: torch.dtype = torch.float32,
                 seed: int = 0):
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        # NaN-filled so that reading a slot that was never written poisons the result.
        self.caches = [(torch.full((num_pages, page_size, num_kv_heads, head_dim), float('nan'), dtype=dtype),
                        torch.full((num_pages, page_size, num_kv_heads, v_head_dim), float('nan'), dtype=dtype))
                       for _ in range(num_layers)]
        self.allocator = PageAllocator(num_pages, page_size, seed=seed)

    @property
    def page_size(self) -> int:
        return self.allocator.page_size

    @property
    def num_pages(self) -> int:
        return self.caches[0][0].size(0)

    def read(self, layer: int, seq_id: int, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of positions ``0 .. kv_len-1`` of ``seq_id`` in ``layer``: ``[kv_len, kv_heads, dim]``."""
        k_cache, v_cache = self.caches[layer]
        table_row = torch.tensor(self.allocator.pages_of(seq_id), dtype=torch.long)
        return gather_kv(k_cache, v_cache, table_row, kv_len)
