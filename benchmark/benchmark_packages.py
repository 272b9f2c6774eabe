"""Import the benchmark/<name> and checks/<name> packages of a benchmark or check script without leaving
benchmark/ on sys.path.

Python puts a script's directory first on sys.path; benchmark/ holds a ``kernels`` folder that would
shadow the ``kernels`` package transformers probes for, so leading benchmark/ entries are dropped and
the packages are loaded from their files instead (checks/ shadows nothing and may stay). A check (checks/) puts benchmark/ first to import this module:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark'))
    from benchmark_packages import load_benchmark_packages
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = os.path.join(os.path.dirname(HERE), 'checks')
ROOTS = (HERE, CHECKS)


def load_benchmark_packages(*names: str) -> None:
    # the leading benchmark/ entries: the script's own and the one its import of this module added
    while sys.path and os.path.abspath(sys.path[0] or os.curdir) == HERE:
        sys.path.pop(0)
    for name in names:
        if name in sys.modules:
            continue
        pkg_dir = next((os.path.join(root, name) for root in ROOTS if os.path.isdir(os.path.join(root, name))),
                       os.path.join(HERE, name))
        spec = importlib.util.spec_from_file_location(name, os.path.join(pkg_dir, '__init__.py'),
                                                      submodule_search_locations=[pkg_dir])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
