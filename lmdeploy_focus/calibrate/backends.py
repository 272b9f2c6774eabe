"""Where the calibration runs: a registry of backends by name.

A backend is a factory ``make_backend(settings: BackendSettings) -> backend`` whose result has ``name`` and
``run(cell, prompts, max_new_tokens) -> (counts, token_ids)``: the ``dllm_track`` counters of the run
(``strategies.dllm.run_stats.KEYS``) and the generated token ids per prompt (greedy decoding).

``engine`` is built in. Other packages add backends through the entry-point group :data:`GROUP` (the
development package registers ``reference``, the pure-torch decode loop on CPU or CUDA); the runtime
names no other package, it only asks the installed metadata.
"""
from dataclasses import dataclass
from importlib.metadata import entry_points

GROUP = 'lmdeploy_focus.calibrate_backends'
BUILT_IN = {'engine': 'lmdeploy_focus.calibrate.engine_backend:make_backend'}
# backends known to live in another distribution, and how to get it
PROVIDED_BY = {'reference': "the development package: pip install '.[dev]' (from a checkout of lmdeploy-focus)"}


class BackendUnavailable(RuntimeError):
    """The backend asked for is not installed or cannot run here."""


@dataclass(frozen=True)
class BackendSettings:
    model_path: str
    block_length: int
    confidence_threshold: float
    batch_size: int
    stop_token_ids: tuple[int, ...]
    device: str = 'auto'  # reference backend: auto / cpu / cuda
    dtype: str = 'auto'  # reference backend: auto (fp32 on CPU, the checkpoint's on CUDA) / float32 / ...
    eager_mode: bool = False  # engine backend: no CUDA graphs


def available() -> dict[str, str]:
    """name -> 'module:attr' of every backend this installation has."""
    found = dict(BUILT_IN)
    found.update({ep.name: ep.value for ep in entry_points(group=GROUP)})
    return found


def load(name: str):
    """The factory of backend ``name``; :class:`BackendUnavailable` with the fix when it is not installed."""
    found = available()
    if name not in found:
        hint = PROVIDED_BY.get(name)
        raise BackendUnavailable(f'calibration backend {name!r} is not installed' +
                                 (f'; it comes with {hint}' if hint else f'; installed: {sorted(found)}'))
    if name in BUILT_IN:
        module_name, _, attr = BUILT_IN[name].partition(':')
        from importlib import import_module
        return getattr(import_module(module_name), attr)
    return next(ep for ep in entry_points(group=GROUP) if ep.name == name).load()


def resolve(name: str, device: str = 'auto') -> str:
    """``auto``: the reference loop where asked to run on the CPU (``device``) or without CUDA, else the engine."""
    if name != 'auto':
        return name
    if device == 'cpu':
        return 'reference'
    import torch
    return 'engine' if torch.cuda.is_available() else 'reference'
