"""Time the ragged paged-attention kernel on the SDAR-8B decode shape (needs CUDA + Triton).

Shape: H 32, Hkv 8, D 128, page 64, bf16; block length L = 32. Per batch size and history length
(tokens before the current block, so kv_len = history + L) it times

* ``dense``:  q_len = L for every sequence (a full-block step), ours and upstream LMDeploy's decode
  kernel (``flash_attn_with_kvcache``), which handles only this dense case;
* ``ragged``: q_len = 8 for every sequence (a typical delayed-cache step), ours only. Upstream would
  have to pad back to L, i.e. pay the ``dense`` time.

``--sweep`` also times a few tile configurations of our kernel (to tune ``choose_tiles``).

    python benchmark/kernels/bench_ragged_attention.py --out ragged_attention.json [--sweep]
"""
import argparse
import json
import math
import platform

import torch
import triton
from triton.testing import do_bench

from lmdeploy_focus.kernels.cuda.ragged_paged_attention import AttentionTiles, choose_tiles, ragged_paged_attention

HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 32, 8, 128, 64
SWEEP_TILES = [
    AttentionTiles(64, 64, 4, 3),
    AttentionTiles(64, 64, 4, 2),
    AttentionTiles(128, 64, 8, 2),
    AttentionTiles(128, 64, 8, 3),
    AttentionTiles(32, 64, 4, 3),
    AttentionTiles(64, 32, 4, 4),
]


def upstream_decode():
    """Upstream's paged decode attention, or the reason it cannot be called."""
    try:
        from lmdeploy.pytorch.kernels.cuda.pagedattention import flash_attn_with_kvcache
        return flash_attn_with_kvcache, None
    except Exception as exc:  # an optional baseline; the table says why it is missing
        return None, f'{type(exc).__name__}: {exc}'


class PagedKV:
    """One bf16 paged K/V cache per batch size, big enough for the longest history; random page table."""

    def __init__(self, batch, max_kv_len):
        pages_per_seq = triton.cdiv(max_kv_len, PAGE_SIZE)
        num_pages = batch * pages_per_seq
        shape = (num_pages, PAGE_SIZE, KV_HEADS, HEAD_DIM)
        self.k_cache = torch.randn(shape, device='cuda', dtype=torch.bfloat16)
        self.v_cache = torch.randn(shape, device='cuda', dtype=torch.bfloat16)
        self.block_offsets = torch.randperm(num_pages, device='cuda', dtype=torch.int32).view(batch, pages_per_seq)


def make_step(kv, batch, q_len, kv_len):
    q_seqlens = torch.full((batch, ), q_len, dtype=torch.int32, device='cuda')
    return dict(q=torch.randn(batch * q_len, HEADS, HEAD_DIM, device='cuda', dtype=torch.bfloat16),
                k_cache=kv.k_cache,
                v_cache=kv.v_cache,
                block_offsets=kv.block_offsets,
                q_start_loc=torch.arange(batch, dtype=torch.int32, device='cuda') * q_len,
                q_seqlens=q_seqlens,
                kv_seqlens=torch.full((batch, ), kv_len, dtype=torch.int32, device='cuda'))


def time_us(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode='median') * 1e3


def record(rows, *, kernel, case, batch, history, q_len, kv_len, tiles, us):
    flops = 4 * batch * q_len * HEADS * kv_len * HEAD_DIM  # QK^T and PV
    kv_bytes = 2 * batch * kv_len * KV_HEADS * HEAD_DIM * 2  # K and V read once, bf16
    rows.append(
        dict(kernel=kernel,
             case=case,
             batch=batch,
             history=history,
             q_len=q_len,
             kv_len=kv_len,
             tiles=tiles,
             us=round(us, 2),
             tflops=round(flops / us / 1e6, 1),
             kv_gbps=round(kv_bytes / us / 1e3, 1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[64, 128, 256])
    parser.add_argument('--histories', type=int, nargs='+', default=[256, 512, 1024, 2048])
    parser.add_argument('--block-len', type=int, default=32)
    parser.add_argument('--ragged-q-len', type=int, default=8)
    parser.add_argument('--sweep', action='store_true', help='also time SWEEP_TILES configurations')
    parser.add_argument('--out', required=True, help='JSON result path')
    args = parser.parse_args()

    block_len, scale = args.block_len, 1 / math.sqrt(HEAD_DIM)
    upstream, upstream_error = upstream_decode()
    default_tiles = choose_tiles(block_len, HEADS // KV_HEADS, HEAD_DIM, PAGE_SIZE)
    tile_configs = [default_tiles] + ([t for t in SWEEP_TILES if t != default_tiles] if args.sweep else [])
    rows, sanity = [], []
    for batch in args.batch_sizes:
        kv = PagedKV(batch, max(args.histories) + block_len)
        for history in args.histories:
            kv_len = history + block_len
            for case, q_len in (('dense', block_len), ('ragged', args.ragged_q_len)):
                step = make_step(kv, batch, q_len, kv_len)
                for tiles in tile_configs:
                    out = torch.empty_like(step['q'])

                    def ours(step=step, out=out, tiles=tiles):
                        ragged_paged_attention(**step, scale=scale, max_q_len=block_len, out=out, tiles=tiles)

                    record(rows,
                           kernel='ours',
                           case=case,
                           batch=batch,
                           history=history,
                           q_len=q_len,
                           kv_len=kv_len,
                           tiles=list(tiles),
                           us=time_us(ours))
                if case == 'dense' and upstream is not None:

                    def theirs(step=step):
                        return upstream(step['q'],
                                        step['k_cache'],
                                        step['v_cache'],
                                        cache_seqlens=step['kv_seqlens'],
                                        page_table=step['block_offsets'],
                                        max_seqlen_q=block_len,
                                        softmax_scale=scale)

                    record(rows,
                           kernel='upstream',
                           case=case,
                           batch=batch,
                           history=history,
                           q_len=q_len,
                           kv_len=kv_len,
                           tiles=None,
                           us=time_us(theirs))
                    ours_out = ragged_paged_attention(**step, scale=scale, max_q_len=block_len)
                    diff = (ours_out.float() - theirs().float()).abs().max().item()
                    sanity.append(dict(batch=batch, history=history, max_abs_diff_vs_upstream=diff))
            del step
        del kv
        torch.cuda.empty_cache()

    print(f'{"case":7} {"bs":>4} {"hist":>5} {"q":>3} {"kernel":9} {"tiles":18} {"us":>9} {"TFLOP/s":>8} '
          f'{"KV GB/s":>8}')
    for r in rows:
        tiles = 'upstream' if r['tiles'] is None else 'x'.join(map(str, r['tiles']))
        print(f'{r["case"]:7} {r["batch"]:>4} {r["history"]:>5} {r["q_len"]:>3} {r["kernel"]:9} {tiles:18} '
              f'{r["us"]:>9.1f} {r["tflops"]:>8.1f} {r["kv_gbps"]:>8.1f}')
    if sanity:
        print('max |ours - upstream| (dense, bf16):', max(s['max_abs_diff_vs_upstream'] for s in sanity))
    if upstream_error:
        print('upstream baseline unavailable:', upstream_error)
    result = dict(device=torch.cuda.get_device_name(),
                  torch=torch.__version__,
                  triton=triton.__version__,
                  python=platform.python_version(),
                  shape=dict(heads=HEADS,
                             kv_heads=KV_HEADS,
                             head_dim=HEAD_DIM,
                             page_size=PAGE_SIZE,
                             dtype='bf16',
                             block_len=block_len,
                             ragged_q_len=args.ragged_q_len),
                  default_tiles=list(default_tiles),
                  tiles_fields=list(AttentionTiles._fields),
                  timing='triton.testing.do_bench, median, L2 flushed between reps',
                  upstream_error=upstream_error,
                  results=rows,
                  sanity=sanity)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
