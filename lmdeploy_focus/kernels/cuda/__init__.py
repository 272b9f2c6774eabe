"""Triton kernels (CUDA) of delayed cache and FOCUS, each tested against the torch implementations in kernels/default.

Exports resolve lazily: importing this package must work where Triton is absent (CPU machines).
"""
import importlib

_EXPORTS = {
    'sparse_fill_kv_cache': '.sparse_fill_kv',
    'ragged_paged_attention': '.ragged_paged_attention',
    'cuda_focus_targets': '.focus_select',
    'cuda_select_kept': '.focus_select',
    'cuda_masked_importance': '.focus_importance',
    'cuda_kept_layout': '.focus_compact',
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    # Importing submodule `ragged_paged_attention` binds the module under the function's name;
    # rebind the function so later lookups find it.
    globals()[name] = value
    return value
