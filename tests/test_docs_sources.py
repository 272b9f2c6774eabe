"""The lists that README repeats are checked against their one source in the code:

* the upstream touch points (README, Architecture) against the patch registry ``patch/targets.py``;
* the flag table (README, Flags) against the option table ``config/options.py``, and every front end of
  the options (``FocusOptions``, ``PytorchEngineConfig``, the CLI) against that table.
"""
import argparse
import re
from dataclasses import fields
from pathlib import Path

from lmdeploy_focus.cli.flags import add_focus_arguments, options_from_args
from lmdeploy_focus.config.options import OPTIONS, FocusOptions
from lmdeploy_focus.patch import targets

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
PATCH_DIR = REPO / 'lmdeploy_focus' / 'patch'


def _section(title: str) -> str:
    start = README.index(f'\n## {title}\n')
    end = README.find('\n## ', start + 1)
    return README[start:end if end >= 0 else None]


def registry_patch_modules() -> set[str]:
    """Every patch module of the registry (an entry may name one or a tuple applied in order)."""
    names = set()
    for patch_modules, _ in targets.PATCHES.values():
        names.update((patch_modules, ) if isinstance(patch_modules, str) else patch_modules)
    return names


def test_patch_registry_matches_the_patch_folder():
    files = {p.stem for p in PATCH_DIR.glob('*.py')} - {'__init__', 'targets'}
    assert files == registry_patch_modules()


def test_readme_patch_list_names_every_registered_patch_and_nothing_else():
    named = set(re.findall(r'`patch/(\w+)\.py`', _section('Architecture')))
    assert named == registry_patch_modules()


def test_patch_package_docstring_documents_every_registered_patch():
    doc = (PATCH_DIR / '__init__.py').read_text()
    documented = set(re.findall(r':mod:`\.(\w+)`', doc))
    assert registry_patch_modules() <= documented


def _flag_rows() -> dict[str, str]:
    """README Flags table: engine-config field -> the row's first cell (its flags)."""
    rows = {}
    for line in _section('Flags').splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) >= 3 and cells[0].startswith('`--'):
            rows[cells[1].strip('`')] = cells[0]
    return rows


def test_readme_flag_table_is_the_option_table():
    rows = _flag_rows()
    assert set(rows) == {o.field for o in OPTIONS}
    for option in OPTIONS:
        for flag in (option.flag, *option.aliases):
            assert f'`{flag}' in rows[option.field], (option.field, flag)


def test_every_front_end_is_generated_from_the_option_table():
    from lmdeploy_focus.config.engine_config import _FIELD_TO_OPTION, PytorchEngineConfig
    assert [f.name for f in fields(FocusOptions)] == [o.name for o in OPTIONS]
    engine_fields = {f.name: f.default for f in fields(PytorchEngineConfig)}
    for option in OPTIONS:
        assert engine_fields[option.field] == option.default
        assert f'{option.field}: {option.help}' in PytorchEngineConfig.__doc__
    assert _FIELD_TO_OPTION == {o.field: o.name for o in OPTIONS}

    parser = argparse.ArgumentParser()
    add_focus_arguments(parser)
    by_dest = {a.dest: a for a in parser._actions}
    for option in OPTIONS:
        action = by_dest[option.field]
        assert set(action.option_strings) == {option.flag, *option.aliases}
        assert action.default == option.default and action.help == option.help
        assert tuple(action.choices) == option.choices if option.choices else action.choices is None
    assert options_from_args(parser.parse_args([])) == FocusOptions()
