"""Import the benchmark/<name> packages of a benchmark script without leaving benchmark/ on sys.path.

Python puts a script's directory first on sys.path; benchmark/ holds a ``kernels`` folder that would
shadow the ``kernels`` package transformers probes for, so that entry is dropped and the packages
are loaded from their files instead.
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_benchmark_packages(*names: str) -> None:
    # the leading benchmark/ entries: the script's own and the one its import of this module added
    while sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
        sys.path.pop(0)
    for name in names:
        if name in sys.modules:
            continue
        pkg_dir = os.path.join(HERE, name)
        spec = importlib.util.spec_from_file_location(name, os.path.join(pkg_dir, '__init__.py'),
                                                      submodule_search_locations=[pkg_dir])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
