"""lmdeploy-focus: FOCUS token eviction for diffusion LLMs in LMDeploy's PyTorch engine.

Installed with ``pip install .``, the plugin activates itself whenever lmdeploy is imported
(see :mod:`lmdeploy_focus._bootstrap`); ``LMDEPLOY_FOCUS_DISABLE=1`` turns it off.
"""
from .version import __version__


def activate() -> bool:
    """Activate the plugin in this process (needed only when it was not installed with its .pth); call it
    before importing lmdeploy, or names upstream modules already imported stay unpatched (it warns). A process
    upstream spawns activates it when it unpickles the FOCUS engine config it is sent."""
    from ._bootstrap import install
    return install()


__all__ = ['__version__', 'activate']
