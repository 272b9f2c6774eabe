"""Activation on ``import lmdeploy``, without the user importing anything.

``lmdeploy_focus.pth`` (installed next to the package in site-packages) runs :func:`install_from_pth`
at interpreter start-up in every Python process, including the engine subprocess that
``lmdeploy serve api_server`` spawns. It only registers a meta-path finder; nothing of lmdeploy (or
torch) is imported until the program imports lmdeploy itself. When one of the upstream modules we
touch finishes executing, :mod:`lmdeploy_focus.patch` applies the patches that belong to it.

This module must stay tiny and must never raise: it runs in every interpreter of the environment.
"""
import importlib.abc
import os
import sys

DISABLE_ENV = 'LMDEPLOY_FOCUS_DISABLE'


_ON, _OFF = ('1', 'true', 'yes', 'on'), ('', '0', 'false', 'no', 'off')
_warned_value = None


def disabled_by_env() -> bool:
    """Whether ``LMDEPLOY_FOCUS_DISABLE`` turns the plugin off; a value that is neither on nor off is said once on
    stderr (a silently active plugin was the surprise), and the plugin stays active."""
    global _warned_value
    value = os.environ.get(DISABLE_ENV, '').strip().lower()
    if value not in _ON and value not in _OFF and value != _warned_value:
        _warned_value = value
        sys.stderr.write(f'lmdeploy-focus: {DISABLE_ENV}={value!r} is neither {"/".join(_ON)} (the plugin off) nor '
                         f'{"/".join(_OFF[1:])}: the plugin stays active\n')
    return value in _ON


class _PatchingLoader(importlib.abc.Loader):
    """Runs the upstream loader, then the patch hook of the module."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Give the module its real loader back (inspect/linecache use it).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._hook(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder that attaches a hook to the loading of selected modules."""

    def __init__(self, watched, hook):
        self._watched = frozenset(watched)
        self._hook = hook

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._watched:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, self._hook)
                return spec
        return None


def _on_import(module):
    try:
        from lmdeploy_focus.patch import on_module_loaded
        on_module_loaded(module)
    except Exception:  # never break the user's import of lmdeploy
        import logging
        logging.getLogger('lmdeploy.focus').exception(
            'lmdeploy-focus failed to patch %s: delayed cache / FOCUS options will be refused (the other patches '
            'stay applied); reinstall lmdeploy==0.18.0 and lmdeploy-focus, or set LMDEPLOY_FOCUS_DISABLE=1 before '
            'Python starts for stock LMDeploy', module.__name__)


_finder = None


def install():
    """Register the post-import finder and patch modules that are already imported."""
    global _finder
    if disabled_by_env():
        return False
    if _finder is None:
        from lmdeploy_focus.patch.targets import WATCHED_MODULES
        _finder = PostImportFinder(WATCHED_MODULES, _on_import)
        sys.meta_path.insert(0, _finder)
        late = [name for name in WATCHED_MODULES if getattr(sys.modules.get(name), '__spec__', None) is not None]
        if late:
            # upstream modules loaded before us may hold the unpatched names they imported (from ... import)
            import logging
            logging.getLogger('lmdeploy.focus').warning(
                'lmdeploy-focus activated after lmdeploy was imported (%s): names other lmdeploy modules already '
                'imported stay unpatched; install the plugin with pip (its .pth activates it at start-up) or call '
                'lmdeploy_focus.activate() before importing lmdeploy', ', '.join(late[:3]) + (', ...' if len(late) > 3 else ''))
        for name in late:
            _on_import(sys.modules[name])
    return True


def install_from_pth():
    try:
        install()
    except Exception as exc:  # a broken plugin must not break every Python start-up, nor go unnoticed
        sys.stderr.write(f'lmdeploy-focus: not activated ({type(exc).__name__}: {exc}); lmdeploy runs stock. '
                         f'Reinstall lmdeploy-focus, or set {DISABLE_ENV}=1 to silence this\n')
