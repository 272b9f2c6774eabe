"""Imports run one way (ARCHITECTURE.md, "Floors"), checked statically on the source files (ast).

* The runtime (``lmdeploy_focus``) never imports the development package (``lmdeploy_focus_dev``:
  oracle, CPU harness, tools), nor the repository's tests, benchmarks or checks.
* Inside the runtime, a module imports only its own floor or the floors below it:
  activation → patch → cli / serving → strategies → models → kernels → config.
  In particular a kernel imports nothing above ``kernels``.

The source tree is read (not the installed copy): the rule is about the code as written.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / 'lmdeploy_focus'
DEV_PACKAGE = 'lmdeploy_focus_dev'
NOT_RUNTIME = (DEV_PACKAGE, 'tests', 'benchmark', 'checks', 'conftest')

# Top to bottom; a module may import its own floor and any floor below it. The key is the first
# component under lmdeploy_focus (a subpackage or a top-level module).
FLOORS = [
    {'__init__', '_bootstrap'},  # activation (the .pth hook)
    {'patch'},  # every upstream touch point
    {'cli', 'serving', 'calibrate'},  # the surfaces the patches install; the calibration command
    {'strategies', 'stats', 'debug_hooks'},  # DLLM strategies, their statistics, debug-hook registry
    {'models'},  # model classes, the sparse decode step and its state
    {'kernels'},  # Triton kernels and their torch twins (kernels/default)
    {'config', 'log', 'version'},  # options, model facts, logging
]
FLOOR_OF = {name: depth for depth, names in enumerate(FLOORS) for name in names}
# The one upward import, lazy and on purpose: a process that unpickles a FOCUS engine config (upstream's checker
# pool, the mp engine, workers) activates the plugin there, also where no .pth started it.
UPWARD_ON_PURPOSE = {('lmdeploy_focus.config.engine_config', 'lmdeploy_focus._bootstrap')}


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix('')
    parts = list(rel.parts)
    is_package = parts[-1] == '__init__'
    if is_package:
        parts = parts[:-1]
    return '.'.join(parts), is_package


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` (relative imports resolved), plus
    string arguments of ``importlib.import_module`` / ``__import__`` calls."""
    package = module if is_package else module.rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            found.append((node.lineno, target))
            # `from lmdeploy_focus import x` imports the submodule x
            found += [(node.lineno, f'{target}.{alias.name}') for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
            if name in ('import_module', '__import__') and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _floor(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What ``source`` (the text of runtime module ``module``) imports against the rules."""
    problems = []
    own = _floor(module)
    for line, target in imported_modules(source, module, is_package):
        top = target.split('.')[0]
        if top in NOT_RUNTIME:
            problems.append(f'{module}:{line} imports {target} (not runtime code)')
            continue
        if top != 'lmdeploy_focus' or target == 'lmdeploy_focus':
            continue
        other = _floor(target)
        if other not in FLOOR_OF:
            continue  # a name imported from a package's __init__ that is not a submodule
        if FLOOR_OF[other] < FLOOR_OF[own] and (module, '.'.join(target.split('.')[:2])) not in UPWARD_ON_PURPOSE:
            problems.append(f'{module}:{line} ({own}) imports {target} ({other}, a floor above)')
    return problems


def runtime_files() -> list[Path]:
    return sorted(RUNTIME.rglob('*.py'))


def test_every_runtime_module_has_a_floor():
    names = {_floor(_module_name(path, RUNTIME)[0]) for path in runtime_files()}
    assert names - set(FLOOR_OF) == set(), 'add the new subpackage / module to FLOORS'


def test_runtime_imports_run_one_way():
    problems = []
    for path in runtime_files():
        module, is_package = _module_name(path, RUNTIME)
        problems += violations(path.read_text(), module, is_package)
    assert problems == []


def test_runtime_never_names_the_dev_package_in_code():
    """Beyond import statements: no string naming the dev package outside docstrings / comments."""
    hits = []
    for path in runtime_files():
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and DEV_PACKAGE in node.value
                    and id(node) not in docstrings):
                hits.append(f'{path.relative_to(REPO)}:{node.lineno}')
    assert hits == []


@pytest.mark.parametrize('module, source, expected', [
    ('lmdeploy_focus.kernels.focus_ops', 'from ..models import sdar', 'a floor above'),
    ('lmdeploy_focus.kernels.cuda.focus_select', 'from ...strategies.dllm import factory', 'a floor above'),
    ('lmdeploy_focus.kernels.focus_ops', 'import lmdeploy_focus.patch', 'a floor above'),
    ('lmdeploy_focus.strategies.dllm.factory', 'from lmdeploy_focus_dev.testing import step_recorder',
     'not runtime code'),
    ('lmdeploy_focus.patch.targets', 'import importlib\nimportlib.import_module("lmdeploy_focus_dev.tools")',
     'not runtime code'),
    ('lmdeploy_focus.models.sdar', 'from lmdeploy_focus import strategies', 'a floor above'),
])
def test_checker_catches_planted_violations(module, source, expected):
    found = violations(source, module)
    assert found and all(expected in problem for problem in found), found


@pytest.mark.parametrize('module, source', [
    ('lmdeploy_focus.kernels.focus_ops', 'from .default import focus\nfrom ..config import options'),
    ('lmdeploy_focus.patch.module_map', 'from ..models.sdar import DelayedCacheSDARForCausalLM'),
    ('lmdeploy_focus.models.sparse_step', 'from .step_state.processing_set import ProcessingSet'),
])
def test_checker_accepts_downward_imports(module, source):
    assert violations(source, module) == []
