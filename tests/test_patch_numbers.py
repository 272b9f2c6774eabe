"""Patch numbers are defined once, by the numbered list in ``lmdeploy_focus/patch/__init__.py``'s docstring: each
patch module's first line names its entry ("Patch 14: ..."), the entry names the module, and every "patch N"
written elsewhere (code, tests, docs) names an entry that exists. Inserting or reordering an entry without
renumbering its references fails here."""
import re
from pathlib import Path

from lmdeploy_focus.patch.targets import PATCHES

REPO = Path(__file__).resolve().parents[1]
PATCH_DIR = REPO / 'lmdeploy_focus' / 'patch'
REFERENCE = re.compile(r'\b[Pp]atch (\d+)([a-z]?)\b')


def _entries() -> dict[int, str]:
    doc = (PATCH_DIR / '__init__.py').read_text().split('"""')[1]
    parts = re.split(r'^(\d+)\. ', doc, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _patch_modules() -> list[str]:
    return sorted(p.stem for p in PATCH_DIR.glob('*.py') if p.stem not in ('__init__', 'targets'))


def test_entries_are_numbered_one_to_n():
    assert sorted(_entries()) == list(range(1, len(_entries()) + 1))


def test_each_patch_module_names_its_entry_and_the_entry_names_it():
    entries = _entries()
    for module in _patch_modules():
        first = (PATCH_DIR / f'{module}.py').read_text().splitlines()[0]
        found = re.match(r'"""Patch (\d+)[a-z]?: ', first)
        assert found, f'{module}.py: its docstring must start "Patch N: " (N its entry in the package docstring)'
        number = int(found.group(1))
        assert number in entries, f'{module}.py says patch {number}, which the package docstring does not list'
        assert f':mod:`.{module}`' in entries[number], f'patch {number}\'s entry does not name :mod:`.{module}`'
        assert [n for n, text in entries.items() if f':mod:`.{module}`' in text] == [number], module


def test_registry_and_files_agree():
    registered = set()
    for names, _provider in PATCHES.values():
        registered.update((names, ) if isinstance(names, str) else names)
    assert registered == set(_patch_modules())


def test_every_reference_names_an_entry():
    entries = _entries()
    checked = 0
    paths = [*REPO.glob('lmdeploy_focus/**/*.py'), *REPO.glob('dev/lmdeploy_focus_dev/**/*.py'),
             *REPO.glob('tests/*.py'), *REPO.glob('checks/*.py'), *REPO.glob('benchmark/**/*.py'),
             *REPO.glob('*.md'), *REPO.glob('benchmark/**/*.sh')]
    for path in paths:
        if 'build' in path.relative_to(REPO).parts:
            continue
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            for match in REFERENCE.finditer(line):
                checked += 1
                assert int(match.group(1)) in entries, f'{path.relative_to(REPO)}:{line_number}: {match.group(0)!r}'
    assert checked > 50  # the pattern still finds the references
