"""Write a random-weight checkpoint with the exact shape and on-disk format of a published one.

    python -m lmdeploy_focus_dev.tools.random_checkpoint --arch sdar-8b OUT_DIR [--seed N]
        [--dtype bfloat16] [--device auto|cpu|cuda] [--overwrite]

No real weights can be downloaded where this project runs, yet engine and kernel work needs
checkpoints LMDeploy loads exactly as downloaded ones: config.json (+ our remote-code config
module for SDAR/LLaDA2), safetensors shards + model.safetensors.index.json, generation_config.json
and the Qwen3 tokenizer files. Init: normal(0, 0.02) for matrices and embeddings, ones for norm
scales, zeros for router biases.

Each tensor is seeded from (seed, tensor name), so the bytes depend only on the seed, dtype and
the generating device type (CPU and CUDA generators differ). On CUDA the tensors are drawn on
the GPU and copied to CPU one shard at a time: only one shard (<= 4 GB) is ever held in host memory.
"""

import argparse
import hashlib
import json
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..devices import NoCudaDevice, resolve_device
from .arch_specs import ARCH_SPECS, ArchSpec, get_arch_spec
from .hf_config_files import REMOTE_CONFIG_MODULES, config_json, generation_config_json
from .qwen3_tokenizer import write_qwen3_tokenizer_files
from .safetensors_shards import Shard, index_json, plan_shards, tensor_dtype
from .weight_layouts import TensorSpec, tensor_specs

INIT_STD = 0.02
DTYPES = ('bfloat16', 'float16', 'float32')


def _tensor_seed(seed: int, name: str) -> int:
    # per-tensor seeds keep every tensor's values independent of shard layout and order
    digest = hashlib.sha256(f'{seed}/{name}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') & (2**63 - 1)


def _random_tensor(tensor: TensorSpec, dtype: torch.dtype, device: torch.device, seed: int,
                   generator: torch.Generator) -> torch.Tensor:
    out = torch.empty(tensor.shape, dtype=tensor_dtype(tensor, dtype), device=device)
    if tensor.init == 'ones':
        return out.fill_(1)
    if tensor.init == 'zeros':
        return out.zero_()
    generator.manual_seed(_tensor_seed(seed, tensor.name))
    return out.normal_(0.0, INIT_STD, generator=generator)


def _write_shard(shard: Shard, path: Path, dtype: torch.dtype, device: torch.device, seed: int,
                 generator: torch.Generator) -> None:
    host = {}
    for tensor in shard.tensors:
        # drawn on `device`, kept on the host only until this shard is written
        host[tensor.name] = _random_tensor(tensor, dtype, device, seed, generator).cpu()
    save_file(host, str(path), metadata={'format': 'pt'})
    path.chmod(0o644)  # safetensors creates files owner-only; serving often runs as another user


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + '\n', encoding='utf-8')


class CheckpointExistsError(FileExistsError):
    """OUT_DIR already holds weights and overwriting was not asked for."""

    def __init__(self, out: Path, existing: str, how: str = 'overwrite=True'):
        self.out, self.existing = out, existing
        super().__init__(f'{out} already holds weights ({existing}): pass {how} to replace them, or choose '
                         f'another folder')


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f'{out} is a file, not a folder: choose another output folder')
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob('*.safetensors')) + sorted(out.glob('*.safetensors.index.json'))
    if stale and not overwrite:
        raise CheckpointExistsError(out, stale[0].name)
    for path in stale:  # old shards of another layout would otherwise linger next to the index
        path.unlink()


def write_metadata_files(spec: ArchSpec, out: Path, dtype_name: str = 'bfloat16', seed: int = 0) -> None:
    """Everything but the weights: configs, remote-code config module, tokenizer, README."""
    _write_json(out / 'config.json', config_json(spec, dtype_name))
    _write_json(out / 'generation_config.json', generation_config_json(spec))
    if spec.model_type in REMOTE_CONFIG_MODULES:
        module_file = REMOTE_CONFIG_MODULES[spec.model_type][0]
        source = resources.files('lmdeploy_focus_dev.tools.hf_code') / module_file
        shutil.copyfile(str(source), out / module_file)
    write_qwen3_tokenizer_files(out, model_max_length=spec.max_position_embeddings)
    note = '' if spec.family in ('qwen3', 'qwen3_moe') else (
        '\nThe tokenizer is the Qwen3 one: its ids fit this vocabulary, but it is not this model\'s '
        'tokenizer (unavailable offline); use it for token-id throughput runs only.\n')
    (out / 'README.md').write_text(
        f'# Random-weight {spec.name} checkpoint\n\nWritten by lmdeploy_focus_dev.tools.random_checkpoint '
        f'(seed {seed}, {dtype_name}). Shapes and names of the published {spec.architecture} '
        f'checkpoint; the weights are random, so outputs are meaningless.\n{note}', encoding='utf-8')


def write_random_checkpoint(arch: str,
                            out_dir: str | Path,
                            seed: int = 0,
                            dtype: str = 'bfloat16',
                            device: str = 'auto',
                            overwrite: bool = False,
                            verbose: bool = False) -> Path:
    """Write the `arch` checkpoint into out_dir and return its path."""
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {DTYPES}')
    spec = get_arch_spec(arch)
    torch_dtype = getattr(torch, dtype)
    dev = resolve_device(device)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    write_metadata_files(spec, out, dtype, seed)

    shards = plan_shards(tensor_specs(spec), torch_dtype, spec.max_shard_bytes)
    generator = torch.Generator(device=dev)
    for shard in shards:
        start = time.perf_counter()
        _write_shard(shard, out / shard.file_name, torch_dtype, dev, seed, generator)
        if verbose:
            print(f'{shard.file_name}: {len(shard.tensors)} tensors, {shard.nbytes / 1e9:.2f} GB, '
                  f'{time.perf_counter() - start:.1f} s', flush=True)
    _write_json(out / 'model.safetensors.index.json', index_json(shards))
    return out


PROG = 'python -m lmdeploy_focus_dev.tools.random_checkpoint'


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' where there is a default worth reading (not for required options or flags)."""

    def _get_help_string(self, action):
        if action.required or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                     formatter_class=_DefaultsHelpFormatter)
    parser.add_argument('--arch', required=True, choices=sorted(ARCH_SPECS),
                        help='published shape to copy (tiny-sdar: a few MB, for CPU tests)')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='folder to write the checkpoint into (created if needed)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights; the same seed, dtype and device '
                        'type give the same bytes')
    parser.add_argument('--dtype', default='bfloat16', choices=DTYPES, help='dtype of the stored weights')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                        help='where the weights are drawn; auto: cuda when available, else cpu')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace weights already in OUT_DIR (otherwise an existing checkpoint is an error)')
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)  # before anything is written (torch's error came after half the folder)
    except NoCudaDevice as e:
        raise SystemExit(f'random_checkpoint: error: {e}') from None

    start = time.perf_counter()
    try:
        out = write_random_checkpoint(args.arch, args.out_dir, seed=args.seed, dtype=args.dtype,
                                      device=args.device, overwrite=args.overwrite, verbose=True)
    except CheckpointExistsError as error:
        raise SystemExit(f'random_checkpoint: error: {CheckpointExistsError(error.out, error.existing, "--overwrite")}'
                         ) from None
    except (NotADirectoryError, FileExistsError) as error:  # OUT_DIR (or a parent) is a file
        raise SystemExit(f'random_checkpoint: error: {error}') from None
    except OSError as error:  # a folder that cannot be created or written (permissions, a read-only file system)
        raise SystemExit(f'random_checkpoint: error: cannot write {args.out_dir}: {error.strerror or error}') from None
    total = json.loads((out / 'model.safetensors.index.json').read_text())['metadata']['total_size']
    print(f'wrote {args.arch} to {out}: {total} tensor bytes ({total / 1e9:.2f} GB) on '
          f'{resolve_device(args.device)} in {time.perf_counter() - start:.1f} s')

if __name__ == '__main__':
    main(sys.argv[1:])
