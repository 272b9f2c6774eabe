"""Values written in more than one place are checked against their one source in the code:

* the lmdeploy pin (``pyproject.toml``, ``requirements/*.txt``) against ``patch.targets.SUPPORTED_LMDEPLOY_VERSION``;
* README's flag defaults against ``config.options.OPTIONS``;
* README's statistics keys and Prometheus series against ``run_stats.KEYS`` / ``stats.derived_metrics`` and the
  counter tables of ``serving/metrics.py``;
* the benchmark's counter lists (``benchmark/quality/decode_stats.py``) and ``serving.metrics.DELTA_KEYS`` (copies
  kept so those modules need not import the engine's strategies) against ``run_stats.KEYS``;
* patch numbers: ``tests/test_patch_numbers.py``.
"""
import re
import tomllib
from itertools import product
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import load_benchmark_script
from lmdeploy_focus.config.options import OPTIONS
from lmdeploy_focus.patch.targets import SUPPORTED_LMDEPLOY_VERSION
from lmdeploy_focus.stats import derived_metrics
from lmdeploy_focus.strategies.dllm.run_stats import KEYS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / 'README.md').read_text()
EXACT_PIN = f'=={SUPPORTED_LMDEPLOY_VERSION}'


def _section(title: str) -> str:
    start = README.index(f'\n## {title}\n')
    end = README.find('\n## ', start + 1)
    return README[start:end if end >= 0 else None]


def _table_rows(section: str) -> list[list[str]]:
    """The cells of each body row of the section's markdown tables (header and rule rows left out)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith('|'):
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if set(''.join(cells)) <= set('- ') or cells[0] in ('flag', 'key'):
            continue
        rows.append(cells)
    return rows


# --- 1. lmdeploy pin ------------------------------------------------------------------------------------------------


def _lmdeploy_requirements(lines) -> list[Requirement]:
    reqs = [Requirement(line.split('#', 1)[0].strip()) for line in lines if line.split('#', 1)[0].strip()]
    return [r for r in reqs if r.name == 'lmdeploy']


PIN_FILES = {
    'pyproject.toml': lambda text: tomllib.loads(text)['project']['dependencies'],
    'requirements/runtime_cuda.txt': str.splitlines,
    'requirements/lmdeploy_nodeps.txt': str.splitlines,
}


@pytest.mark.parametrize('path', sorted(PIN_FILES))
def test_lmdeploy_pin_is_the_supported_version(path):
    # the patches check the exact version at import: any other pin installs a plugin that stays off
    reqs = _lmdeploy_requirements(PIN_FILES[path]((REPO / path).read_text()))
    assert [str(r.specifier) for r in reqs] == [EXACT_PIN], (path, reqs)


# --- 2. README flag defaults ------------------------------------------------------------------------------------------

# README cells that say more than the default, by field: the cell must be the default followed by exactly this
README_DEFAULT_NOTES = {'dllm_track': ' (api_server: on with delayed cache / FOCUS, see below)'}


def _readme_default(default) -> str:
    """How the flag table writes a default: switches as on / off, numbers and choices as Python prints them."""
    if isinstance(default, bool):
        return 'on' if default else 'off'
    return str(default)


def test_readme_flag_defaults_are_the_option_defaults():
    cells = {row[1].strip('`'): row[2] for row in _table_rows(_section('Flags')) if row[0].startswith('`--')}
    assert set(cells) == {o.field for o in OPTIONS}
    for option in OPTIONS:
        expected = _readme_default(option.default) + README_DEFAULT_NOTES.get(option.field, '')
        assert cells[option.field] == expected, option.field


# --- 3. README statistics -----------------------------------------------------------------------------------------------


def _statistics_rows() -> list[list[str]]:
    return _table_rows(_section('Statistics (`--dllm-track`)'))


def test_readme_statistics_table_names_every_run_stats_key():
    # every key spelled out (no `shadow_*`): a reader greps the README for the key read_run_report returned
    named = {k for row in _statistics_rows() for k in re.findall(r'`(\w+)`', row[0])}
    assert named == set(KEYS)


def test_readme_statistics_table_names_every_derived_ratio():
    # read_run_report returns "the totals and ratios below": each ratio is named in some row's meaning
    meanings = ' '.join(row[1] for row in _statistics_rows())
    for name in derived_metrics({}):
        assert f'`{name}`' in meanings, name


def _expand_braces(name: str) -> list[str]:
    """``a_{b,c}_d`` -> ``a_b_d``, ``a_c_d`` (the README's shorthand for series families)."""
    parts = re.split(r'\{([^}]*)\}', name)
    choices = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
    return [''.join(c) for c in product(*choices)]


def _metrics_counters() -> dict[str, tuple[str, str]]:
    """serving/metrics.py's counter tables merged: counter name -> (run_stats key, help)."""
    from lmdeploy_focus.serving import metrics
    tables = [v for k, v in vars(metrics).items() if k.endswith('_COUNTERS') and isinstance(v, dict)]
    return {name: entry for table in tables for name, entry in table.items()}


def test_readme_prometheus_series_are_the_metrics_counters():
    from lmdeploy_focus.serving import metrics
    written = re.findall(r'lmdeploy:dllm_([\w{},]+)', _section('Statistics (`--dllm-track`)'))
    series = {name for w in written for name in _expand_braces(w)}
    counters = {n[:-len('_total')] for n in series if n.endswith('_total')}
    assert counters == set(_metrics_counters())
    # the histograms have no table in metrics.py: each README name must be one DLLMStatLogger registers
    source = Path(metrics.__file__).read_text()
    for histogram in series - {f'{c}_total' for c in counters}:
        assert f"histogram('{histogram}'" in source, histogram


def test_metrics_docstring_series_table_is_the_counter_tables():
    from lmdeploy_focus.serving import metrics
    rows = re.findall(r'``lmdeploy:dllm_(\w+)_total`` +counter +``(\w+)``', metrics.__doc__)
    assert dict(rows) == {name: key for name, (key, _) in _metrics_counters().items()}


# --- 5. copies of the counter names -----------------------------------------------------------------------------------


def _decode_stats():
    return load_benchmark_script('quality/decode_stats')  # by path: benchmark/ is no package


def test_benchmark_decode_stats_counters_are_run_stats_keys():
    decode_stats = _decode_stats()
    assert set(decode_stats.STAT_KEYS) <= set(KEYS)
    # derive() reads only STAT_KEYS: a guard on any other counter would never see it
    assert set(decode_stats.RATIO_NEEDS.values()) <= set(decode_stats.STAT_KEYS) & set(KEYS)
    # one guard per ratio of stats.derived_metrics, each also reported
    assert set(decode_stats.RATIO_NEEDS) == set(derived_metrics({}))
    assert set(decode_stats.RATIO_NEEDS) <= set(decode_stats.RATIO_KEYS)


def test_metrics_delta_keys_are_run_stats_keys():
    # serving/metrics.py copies the key set rather than import the engine's strategies (its comment): every
    # engine total feeds one counter, none twice
    from lmdeploy_focus.serving.metrics import DELTA_KEYS
    assert sorted(DELTA_KEYS) == sorted(KEYS)


def test_unmasking_strategy_choices_are_upstreams_enum():
    """The command lines offer ``UNMASKING_STRATEGIES`` as choices without importing the engine: they must be
    the names upstream's ``UnmaskingStrategy.from_str`` takes, all of them."""
    from lmdeploy.pytorch.config import UnmaskingStrategy
    from lmdeploy_focus.config.compat import UNMASKING_STRATEGIES
    assert sorted(UNMASKING_STRATEGIES) == sorted(member.name.lower() for member in UnmaskingStrategy)
    assert {UnmaskingStrategy.from_str(name) for name in UNMASKING_STRATEGIES} == set(UnmaskingStrategy)
