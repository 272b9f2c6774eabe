"""The ``--device`` of the dev tools (reference loop, calibration's reference backend, random checkpoints)."""
import torch


class NoCudaDevice(ValueError):
    """``--device cuda`` on a machine where torch sees no CUDA GPU."""


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU; ``cuda`` without one is a :class:`NoCudaDevice`
    (torch's own error came from deep inside the first tensor, after files were written)."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise NoCudaDevice(f'--device {name}: no CUDA GPU here (use --device cpu or auto)')
    return torch.device(name)
