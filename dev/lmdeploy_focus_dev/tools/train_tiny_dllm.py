"""Train, export and evaluate the tiny SDAR block-diffusion model (issue 6).

    python -m lmdeploy_focus_dev.tools.train_tiny_dllm --size 5m --out OUT --data .data/tiny_dllm --seed 0
        [--steps N|auto] [--minutes 6.5] [--batch-size B] [--lr LR] [--device auto|cpu|cuda]
        [--eval-tasks 128] [--eval-text 32] [--eval-minutes 1.5] [--eval-workers N] [--compile]

Writes ``OUT/tiny-sdar-<size>-b32/``: the HF-format SDAR checkpoint (bf16 safetensors, config,
tokenizer), ``train_log.json`` (config, loss curve, timings), ``eval.json`` (exact match at
confidence thresholds 0.9/0.8/0.7 and tokens decoded per forward, via the reference decode loop)
and a README model card. ``--data`` is the folder ``tiny_dllm.prepare_kjv`` wrote.
"""
import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from ..devices import NoCudaDevice, resolve_device
from .tiny_dllm.data import load_corpora
from .tiny_dllm.eval_runner import run_evaluation
from .tiny_dllm.evaluate import THRESHOLDS
from .tiny_dllm.export import checkpoint_name, export_checkpoint
from .tiny_dllm.model_card import write_model_card
from .tiny_dllm.sizes import SIZES, parameter_count
from .tiny_dllm.train import TrainConfig, train

BLOCK_LENGTH = 32


def _steps(value: str) -> int | str:
    return value if value == 'auto' else int(value)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', required=True, choices=sorted(SIZES))
    parser.add_argument('--out', required=True, type=Path, help='the checkpoint folder is created inside')
    parser.add_argument('--data', required=True, type=Path, help='folder with kjv_train.txt / kjv_heldout.txt')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--steps', type=_steps, help="a count, or 'auto' (fit --minutes); default: the size's")
    parser.add_argument('--minutes', type=float, default=6.5, help='wall-clock cap on training (safety net)')
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--lr', type=float)
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    parser.add_argument('--eval-tasks', type=int, default=128, help='held-out tasks per threshold (0: no eval)')
    parser.add_argument('--eval-text', type=int, default=32, help='held-out text prompts per threshold')
    parser.add_argument('--eval-minutes', type=float, default=1.5, help='eval work not started by then is dropped')
    parser.add_argument('--eval-workers', type=int, help='CPU processes for the eval (default: all cores)')
    parser.add_argument('--log-every', type=int, default=50)
    parser.add_argument('--compile', action='store_true', help='torch.compile the model (CUDA)')
    return parser.parse_args(argv)


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=1) + '\n', encoding='utf-8')


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wall_start = time.perf_counter()
    defaults = SIZES[args.size]
    try:
        device = str(resolve_device(args.device))
    except NoCudaDevice as e:
        raise SystemExit(f'train_tiny_dllm: error: {e}') from None
    cfg = TrainConfig(shape=defaults.shape,
                      steps={None: defaults.steps, 'auto': None}.get(args.steps, args.steps),
                      batch_size=args.batch_size or defaults.batch_size, lr=args.lr or defaults.lr,
                      seed=args.seed, max_minutes=args.minutes, log_every=args.log_every, compile=args.compile)
    train_text, heldout_text = load_corpora(args.data)
    print(f'tiny-sdar-{args.size}: {parameter_count(cfg.shape) / 1e6:.2f} M parameters on {device}', flush=True)

    model, log = train(cfg, train_text, device, log=lambda m: print(m, flush=True))
    out = export_checkpoint(model, args.out / checkpoint_name(args.size, BLOCK_LENGTH))
    # the command that reproduces this run exactly: with the step count actually planned
    repro = ['python -m lmdeploy_focus_dev.tools.train_tiny_dllm', f'--size {args.size}', '--out OUT', '--data DATA',
             f'--seed {cfg.seed}', f'--steps {log.planned_steps}', f'--batch-size {cfg.batch_size}', f'--lr {cfg.lr}']
    command = ' '.join(['python -m lmdeploy_focus_dev.tools.train_tiny_dllm'] + [shlex.quote(a) for a in argv])
    train_log = {'command': command,
                 'reproduce': ' '.join(repro), 'summary': log.summary(), 'device': log.device,
                 'torch': torch.__version__, 'config': log.config, 'curve': log.curve}
    _write_json(out / 'train_log.json', train_log)
    print(f'exported {out} ({time.perf_counter() - wall_start:.0f} s so far)', flush=True)

    evaluation = None
    if args.eval_tasks > 0:
        evaluation = run_evaluation(out, heldout_text, args.eval_tasks, args.eval_text, THRESHOLDS, BLOCK_LENGTH,
                                    workers=args.eval_workers, deadline_seconds=args.eval_minutes * 60,
                                    log=lambda m: print(m, flush=True))
        _write_json(out / 'eval.json', evaluation)
    write_model_card(out, args.size, cfg.shape, train_log['reproduce'], log.summary(), log.config, evaluation)
    print(f'done in {time.perf_counter() - wall_start:.0f} s: {out}', flush=True)
    return out


if __name__ == '__main__':
    main()
