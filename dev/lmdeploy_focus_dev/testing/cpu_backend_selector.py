"""Test-only patch: select the CPU ops backend so upstream model modules run without a GPU.

What is patched: ``lmdeploy.pytorch.backends.selector._get_backend`` (module attribute).

Why: upstream 0.18.0 has no CPU backend; ``_get_backend`` maps the current device type to
cuda/ascend/maca/camb and raises otherwise. Every ``get_backend()`` call (op construction in
``lmdeploy.pytorch.nn``, ``StepContext.new`` → ``update_step_context``) goes through it, so
swapping it is the one hook that makes models build and run on CPU.

How: a re-entrant context manager replaces the attribute with a function returning
:class:`lmdeploy_focus_dev.testing.cpu_backend.CpuOpsBackend` and restores the previous value on
exit; in pytest, enter it in a fixture (``with upstream_on_cpu(): yield``). It is never applied
at plugin activation; only tests and the CPU harness enter it.

Also needed on CPU, not a patch: upstream wraps the default rotary embedding in
``torch.compile`` (``backends/default/rotary_embedding.py``), which costs ~20 s of Inductor
compilation on a CPU for a few-token input. :func:`upstream_on_cpu` runs everything under the
public ``torch.compiler.set_stance('force_eager')`` instead.

Upstream change that would remove it: a ``'cpu'`` device type in ``backends/selector.py`` (and
``PytorchEngineConfig``) backed by ``DefaultOpsBackend`` plus a torch paged attention, or a
registry for out-of-tree ops backends.
"""
import contextlib

import torch
from lmdeploy.pytorch.backends import selector

from lmdeploy_focus_dev.testing.cpu_backend import CpuOpsBackend


def _get_cpu_backend():
    return CpuOpsBackend


@contextlib.contextmanager
def cpu_backend_selected():
    """Within the block, ``lmdeploy.pytorch.backends.get_backend()`` returns ``CpuOpsBackend``."""
    previous = selector._get_backend
    selector._get_backend = _get_cpu_backend
    try:
        yield CpuOpsBackend
    finally:
        selector._get_backend = previous


@contextlib.contextmanager
def upstream_on_cpu():
    """What running upstream model modules on CPU needs: the CPU backend and eager execution."""
    with cpu_backend_selected() as backend, torch.compiler.set_stance('force_eager'):
        yield backend

