"""FOCUS's importance kernel holds a block in one tile per program: the sizes that fit a Hopper GPU's shared memory
are accepted, larger ones refused with a clear error before a launch (a first GPU run of block length 256 ended in
Triton's OutOfResources). CPU: the wrapper's check runs before any launch, and the kernel is compiled for sm_90
offline with Triton's bundled ptxas to read its shared memory."""
import os

import pytest
import torch

triton = pytest.importorskip('triton')

from lmdeploy_focus.config.compat import (MAX_FOCUS_BLOCK_LENGTH, MAX_FOCUS_TILE_BYTES,  # noqa: E402
                                         check_focus_tiles, focus_tile_bytes)
from lmdeploy_focus.kernels.cuda.focus_importance import _masked_importance_kernel, cuda_masked_importance  # noqa: E402

SM90_SHARED_BYTES = 232448  # the most dynamic shared memory a block may have on sm_90 (227 KiB)


def _inputs(rows, heads, kv_heads, head_dim, dtype):
    q, k = torch.randn(rows, heads, head_dim).to(dtype), torch.randn(rows, kv_heads, head_dim).to(dtype)
    return q, k, torch.zeros(1, dtype=torch.int32), torch.tensor([rows], dtype=torch.int32), torch.ones(rows,
                                                                                                         dtype=torch.bool)


@pytest.mark.parametrize('block_len, head_dim, dtype', [(256, 128, torch.bfloat16), (256, 128, torch.float16),
                                                        (128, 128, torch.float32), (128, 256, torch.bfloat16)])
def test_importance_refuses_tiles_past_shared_memory_before_a_launch(block_len, head_dim, dtype):
    q, k, start, lens, cand = _inputs(block_len, 8, 2, head_dim, dtype)  # CPU tensors: a launch would fail otherwise
    with pytest.raises(ValueError, match=f'FOCUS importance: a block of {block_len} rows'):
        cuda_masked_importance(q, k, start, lens, cand, 0.1, block_len)


def test_focus_block_limit_is_the_kernels():
    """The config's limit is the longest block the kernel takes with the engine's heads (16-bit, d 128)."""
    for dtype in (torch.bfloat16, torch.float16):
        assert focus_tile_bytes(MAX_FOCUS_BLOCK_LENGTH, 128, dtype.itemsize) <= MAX_FOCUS_TILE_BYTES
        assert focus_tile_bytes(2 * MAX_FOCUS_BLOCK_LENGTH, 128, dtype.itemsize) > MAX_FOCUS_TILE_BYTES
    # the model-aware check: wider heads need shorter blocks
    check_focus_tiles(MAX_FOCUS_BLOCK_LENGTH, 128, torch.bfloat16)
    check_focus_tiles(MAX_FOCUS_BLOCK_LENGTH // 2, 256, torch.bfloat16)
    with pytest.raises(ValueError, match='256-dim'):
        check_focus_tiles(MAX_FOCUS_BLOCK_LENGTH, 256, torch.bfloat16)


def _ptxas_available() -> bool:
    return os.path.isfile(os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas'))


@pytest.mark.skipif(not _ptxas_available(), reason="needs Triton's bundled ptxas")
@pytest.mark.parametrize('block_len, dtype', [(MAX_FOCUS_BLOCK_LENGTH, 'bf16'), (64, 'fp32')])
def test_the_largest_accepted_tiles_compile_within_sm90_shared_memory(block_len, dtype):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    element = {'bf16': torch.bfloat16, 'fp32': torch.float32}[dtype]
    assert focus_tile_bytes(block_len, 128, element.itemsize) == MAX_FOCUS_TILE_BYTES  # the boundary itself
    pointers = dict(q_ptr=f'*{dtype}', k_ptr=f'*{dtype}', q_start_loc_ptr='*i32', q_seqlens_ptr='*i32',
                    candidate_ptr='*i1', out_ptr='*fp32')
    scalars = dict(scale='fp32', **{name: 'i32' for name in ('stride_ot', 'stride_qt', 'stride_qh', 'stride_qd',
                                                             'stride_kt', 'stride_kh', 'stride_kd')})
    constants = dict(GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_L=block_len)
    source = ASTSource(fn=_masked_importance_kernel, signature={**pointers, **scalars, **dict.fromkeys(constants,
                                                                                                       'constexpr')},
                       constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4))
    assert 0 < compiled.metadata.shared <= SM90_SHARED_BYTES


def test_the_engine_config_refuses_focus_past_the_limit_and_keeps_delayed_cache():
    from lmdeploy import PytorchEngineConfig
    long = 2 * MAX_FOCUS_BLOCK_LENGTH
    for focus in (dict(dllm_enable_focus=True), dict(dllm_focus_shadow=True)):  # shadow computes importance too
        with pytest.raises(ValueError, match=f'FOCUS runs blocks of at most {MAX_FOCUS_BLOCK_LENGTH}'):
            PytorchEngineConfig(dllm_block_length=long, block_size=long, max_prefill_token_num=4096, **focus)
    PytorchEngineConfig(dllm_block_length=MAX_FOCUS_BLOCK_LENGTH, block_size=MAX_FOCUS_BLOCK_LENGTH,
                        dllm_enable_focus=True)
    PytorchEngineConfig(dllm_block_length=long, block_size=long, max_prefill_token_num=4096,
                        dllm_enable_delayed_cache=True)
