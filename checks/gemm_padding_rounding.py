"""Does padding a bf16 GEMM's row count change the rows it shares with the unpadded GEMM? (GPU only)

The delayed-cache / FOCUS graph path runs the deep layers on ``K̂ ≥ K`` rows (a row bucket) where eager
runs exactly ``K``; stock's graph pads only the batch. If cuBLAS picks another kernel (tile, split-K) for
the padded shape, the shared rows round differently, and a decision taken on a near-tie (dynamic
unmasking's top-1 on random weights) can go the other way between graphs and eager. This measures, for
SDAR-1.7B's projection shapes, how often ``(x[:K̂] @ W)[:K]`` is not bitwise ``x[:K] @ W``.

    python3 checks/gemm_padding_rounding.py --out OUT.json
"""
import argparse
import json

import torch

# (name, in features, out features) of SDAR-1.7B: fused QKV, attention output, gate+up, down, LM head
SHAPES = (('qkv', 2048, 4096), ('o_proj', 2048, 2048), ('gate_up', 2048, 12288), ('down', 6144, 2048),
          ('lm_head', 2048, 151936))


def padded_rows_differ(x: torch.Tensor, weight: torch.Tensor, rows: int, padded: int) -> tuple[bool, float]:
    exact = x[:rows] @ weight
    pad = (x[:padded] @ weight)[:rows]
    diff = (exact.float() - pad.float()).abs().max().item()
    return not torch.equal(exact, pad), diff


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', required=True)
    p.add_argument('--bucket', type=int, default=24, help='row bucket step (B̂·L / 32 at batch bucket 24, L 32)')
    p.add_argument('--max-rows', type=int, default=768)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('needs a GPU (the question is about cuBLAS kernel choice)')
    gen = torch.Generator(device='cuda').manual_seed(0)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, bucket=args.bucket, shapes={})
    for name, fin, fout in SHAPES:
        weight = torch.randn(fin, fout, device='cuda', dtype=torch.bfloat16, generator=gen) * fin ** -0.5
        x = torch.randn(args.max_rows, fin, device='cuda', dtype=torch.bfloat16, generator=gen)
        differing, max_diff, tried = [], 0.0, 0
        for rows in range(1, args.max_rows + 1):
            padded = -(-rows // args.bucket) * args.bucket
            if padded == rows:
                continue
            tried += 1
            differ, diff = padded_rows_differ(x, weight, rows, padded)
            if differ:
                differing.append(rows)
                max_diff = max(max_diff, diff)
        report['shapes'][name] = dict(row_counts_tried=tried, row_counts_differing=len(differing),
                                      first_differing=differing[:20], max_abs_diff=max_diff)
        print(name, report['shapes'][name], flush=True)
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
