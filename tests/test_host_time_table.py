"""benchmark/host_time_table.py: the engine process's inclusive host seconds per function, per arm."""
import json
import os
import random
import subprocess
import sys

import pytest

from conftest import BENCHMARK_DIR as BENCH, load_benchmark_script


def _module():
    return load_benchmark_script('host_time_table')


ENGINE = 'lmdeploy/pytorch/engine/model_agent/agent.py _async_step'
FUNCS = [ENGINE, 'lmdeploy_focus/strategies/dllm/delayed_cache_runtime.py run_step',
         'lmdeploy/pytorch/strategies/dllm/step_inputs.py step_decode', 'somewhere.py other']


def _profile(rng, engine: bool, listed):
    """Two loads of one process; the engine lists the agent's step, the other process a stand-in function."""
    windows = []
    for _ in range(2):
        names = ([ENGINE] if engine else ['server.py serve']) + [n for n in listed if n != ENGINE]
        windows.append(dict(wall_s=rng.uniform(5, 20), top_inclusive=[(n, round(rng.random(), 4)) for n in names]))
    return dict(argv=['lmdeploy', 'serve'], windows=windows)


def test_sums_share_times_wall_over_the_loads_of_the_engine_process_only(tmp_path):
    rng = random.Random()
    listed = {'stock': FUNCS[:1] + FUNCS[2:3], 'focus': FUNCS[:3]}
    arms = {}
    for arm, names in listed.items():
        decoy = _profile(rng, False, names)  # the api_server's own process: same functions, must not be read
        arms[arm] = dict(host_profile=[decoy, _profile(rng, True, names)])
    arms['unprofiled'] = dict(host_profile=None)
    result = dict(arms=arms)
    mod = _module()
    names, rows = mod.table(result)
    assert names == ['stock', 'focus', 'unprofiled']
    by_name = dict(rows)
    assert set(by_name) == set(FUNCS[:3])  # the default patterns; 'other' is not one of them
    for i, arm in enumerate(['stock', 'focus']):
        engine = arms[arm]['host_profile'][1]
        for name in FUNCS[:3]:
            expected = sum(share * w['wall_s'] for w in engine['windows'] for n, share in w['top_inclusive'] if n == name)
            cell = by_name[name][i]
            if name in listed[arm]:
                assert cell == pytest.approx(expected)
            else:
                assert cell == mod.BELOW_CUT
    assert all(cells[2] == mod.MISSING for cells in by_name.values())
    stock_seconds = [c if not isinstance(c, str) else 0.0 for c in (cells[0] for _, cells in rows)]
    assert stock_seconds == sorted(stock_seconds, reverse=True)  # ordered by the first profiled arm
    _, top = mod.table(result, top=1)
    assert [name for name, _ in top] == [max(FUNCS[:1] + FUNCS[2:3], key=lambda n: by_name[n][0])]
    path = tmp_path / 'paired.json'
    path.write_text(json.dumps(result))
    out = subprocess.run([sys.executable, os.path.join(BENCH, 'host_time_table.py'), str(path), '--function',
                          'run_step'], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == '| engine host s, summed over the loads | stock | focus | unprofiled |'
    assert len(out) == 3 and out[2].startswith(f'| {FUNCS[1]} | · | ') and out[2].endswith(' | — |')
