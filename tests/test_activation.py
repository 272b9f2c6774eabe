"""Activation on import of lmdeploy, the exact-version guard and LMDEPLOY_FOCUS_DISABLE."""
import json
import site
from pathlib import Path

import pytest

from conftest import run_python

STATE = '''
import json, sys
import lmdeploy
import lmdeploy.pytorch.strategies.dllm as dllm
import lmdeploy.pytorch.configurations
import lmdeploy.pytorch.config
from lmdeploy.messages import PytorchEngineConfig
state = dict(config=PytorchEngineConfig.__module__, factory=dllm.DLLMStrategyFactory.__module__,
             focus_imported='lmdeploy_focus' in sys.modules)
try:
    PytorchEngineConfig(dllm_enable_focus=True)
    state['focus_kwarg'] = 'accepted'
except TypeError:
    state['focus_kwarg'] = 'TypeError'
print('STATE' + json.dumps(state))
'''


def state_of(out):
    lines = [line for line in out.stdout.splitlines() if line.startswith('STATE')]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[0][5:])


def test_pth_file_is_installed():
    pth = [Path(p) / 'lmdeploy_focus.pth' for p in site.getsitepackages()]
    assert any(p.exists() for p in pth), 'run `pip install .`: the suite tests the installed plugin'


def test_importing_lmdeploy_activates_the_plugin():
    state = state_of(run_python(STATE))
    assert state == dict(config='lmdeploy_focus.config.engine_config',
                         factory='lmdeploy_focus.strategies.dllm.factory',
                         focus_imported=True,
                         focus_kwarg='accepted')


def test_start_up_imports_only_the_finder_and_the_patch_table():
    """Every Python start in the environment runs the .pth: it imported the plugin's config and logging modules
    too (patch/__init__ did at import), about 25 ms a start. Found by a patch-discipline audit."""
    out = run_python("import sys; print('MODS', sorted(m for m in sys.modules if m.startswith('lmdeploy')))")
    line = [x for x in out.stdout.splitlines() if x.startswith('MODS')]
    assert line == ["MODS ['lmdeploy_focus', 'lmdeploy_focus._bootstrap', 'lmdeploy_focus.patch', "
                    "'lmdeploy_focus.patch.targets', 'lmdeploy_focus.version']"], out.stderr[-2000:]


def test_a_broken_activation_says_so_on_stderr(monkeypatch, capsys):
    """A plugin that failed to activate left stock lmdeploy without a word (a later dllm_* option was a bare
    TypeError). Found by a patch-discipline audit."""
    from lmdeploy_focus import _bootstrap

    def broken():
        raise ImportError('cannot import name X')

    monkeypatch.setattr(_bootstrap, 'install', broken)
    _bootstrap.install_from_pth()  # never raises
    err = capsys.readouterr().err.splitlines()
    assert err == ['lmdeploy-focus: not activated (ImportError: cannot import name X); lmdeploy runs stock. '
                   'Reinstall lmdeploy-focus, or set LMDEPLOY_FOCUS_DISABLE=1 to silence this']


@pytest.mark.parametrize('value', ['1', 'true'])
def test_disable_env_gives_stock_lmdeploy(value):
    state = state_of(run_python(STATE, env={'LMDEPLOY_FOCUS_DISABLE': value}))
    assert state == dict(config='lmdeploy.messages',
                         factory='lmdeploy.pytorch.strategies.dllm',
                         focus_imported=True,  # the .pth imports the tiny bootstrap module only
                         focus_kwarg='TypeError')


def test_an_unknown_disable_value_is_said_once_and_keeps_the_plugin():
    """LMDEPLOY_FOCUS_DISABLE=maybe left the plugin active without a word. Found by a newcomer run-through."""
    out = run_python(STATE, env={'LMDEPLOY_FOCUS_DISABLE': 'maybe'})
    assert state_of(out)['focus_kwarg'] == 'accepted'
    said = [line for line in out.stderr.splitlines() if 'LMDEPLOY_FOCUS_DISABLE' in line]
    assert said == ["lmdeploy-focus: LMDEPLOY_FOCUS_DISABLE='maybe' is neither 1/true/yes/on (the plugin off) nor "
                    "0/false/no/off: the plugin stays active"], out.stderr[-2000:]


def test_other_lmdeploy_version_stays_inactive_with_one_warning():
    fake_version = '''
import sys, types
fake = types.ModuleType('lmdeploy.version')
fake.__version__ = '0.19.0'
fake.version_info = (0, 19, 0)
sys.modules['lmdeploy.version'] = fake
'''
    out = run_python(fake_version + STATE)
    state = state_of(out)
    assert state['config'] == 'lmdeploy.messages' and state['factory'] == 'lmdeploy.pytorch.strategies.dllm'
    assert state['focus_kwarg'] == 'TypeError'
    assert (out.stdout + out.stderr).count('supports lmdeploy==0.18.0 only, found 0.19.0') == 1


def test_spawned_engine_process_is_activated_too(tmp_path):
    """api_server runs the engine in a `spawn`ed child; the .pth activates the plugin there."""
    code = '''
import json, multiprocessing as mp

def child(queue):
    from lmdeploy.messages import PytorchEngineConfig
    import lmdeploy.pytorch.strategies.dllm as dllm
    queue.put([PytorchEngineConfig.__module__, dllm.DLLMStrategyFactory.__module__])

if __name__ == '__main__':
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    print('STATE' + json.dumps(queue.get(timeout=120)))
    proc.join()
'''
    # The parent never imports lmdeploy: only the .pth can have activated the child.
    script = tmp_path / 'spawn_probe.py'  # spawn re-imports __main__, so it must be a file
    script.write_text(code)
    out = run_python(f'import runpy; runpy.run_path({str(script)!r}, run_name="__main__")')
    assert state_of(out) == ['lmdeploy_focus.config.engine_config', 'lmdeploy_focus.strategies.dllm.factory']


def test_import_of_a_plugin_module_first_still_patches():
    """Importing a replacement provider before upstream must not leave its patch unapplied, nor the upstream engine
    config class in a module that imported it meanwhile: ``pipeline(model)`` built its default config from
    ``lmdeploy.archs``'s name, and upstream's engine checker pickles that config on CUDA, which failed ("not the same
    object as lmdeploy.messages.PytorchEngineConfig"). Found by a bug-hunting review."""
    out = run_python('''
import json, pickle, sys
from lmdeploy_focus.config.engine_config import PytorchEngineConfig
from lmdeploy_focus.strategies.dllm import FocusDLLMStrategyFactory
import lmdeploy, lmdeploy.pytorch.strategies.dllm as dllm
import lmdeploy.archs, lmdeploy.pipeline, lmdeploy.serve.core.async_engine
stale = sorted(n for n, m in list(sys.modules.items()) if n.split('.')[0] == 'lmdeploy'
               and getattr(m, 'PytorchEngineConfig', PytorchEngineConfig) is not PytorchEngineConfig)
config = lmdeploy.archs.PytorchEngineConfig(dllm_enable_focus=True)
print('STATE' + json.dumps([dllm.DLLMStrategyFactory is FocusDLLMStrategyFactory,
                            lmdeploy.PytorchEngineConfig is PytorchEngineConfig, stale,
                            pickle.loads(pickle.dumps(config)) == config]))
''')
    assert state_of(out) == [True, True, [], True]


HALF_APPLIED = '''
import json
import lmdeploy_focus.patch.strategy_factory as failing
def apply(module):
    raise RuntimeError('simulated patch failure')
failing.apply = apply
import lmdeploy.pytorch.strategies.dllm as dllm   # its patch raises (logged, the import goes on)
from lmdeploy.messages import PytorchEngineConfig
from lmdeploy_focus.patch import applied_patches, patch_failures
state = dict(factory=dllm.DLLMStrategyFactory.__module__, failures=patch_failures(),
             listed='lmdeploy.pytorch.strategies.dllm' in applied_patches())
PytorchEngineConfig()  # stock decoding still configures
try:
    PytorchEngineConfig(dllm_enable_focus=True)
    state['focus'] = 'accepted'
except RuntimeError as e:
    state['focus'] = str(e)
print('STATE' + json.dumps(state))
'''


def test_a_failed_patch_refuses_focus_instead_of_running_it_on_a_partly_stock_engine():
    out = run_python(HALF_APPLIED)
    state = state_of(out)
    assert state['factory'] == 'lmdeploy.pytorch.strategies.dllm'  # the factory stayed upstream's
    assert state['failures'] == {'lmdeploy.pytorch.strategies.dllm': 'RuntimeError: simulated patch failure'}
    assert not state['listed']
    assert 'cannot run: lmdeploy-focus failed to patch lmdeploy.pytorch.strategies.dllm' in state['focus']
    assert 'failed to patch lmdeploy.pytorch.strategies.dllm: delayed cache / FOCUS options will be refused' in \
        out.stdout + out.stderr


IMPORTED_FIRST = '''
import importlib, json, sys
importlib.import_module(sys.argv[1])
from lmdeploy_focus.patch import patch_failures
from lmdeploy_focus.patch.targets import PATCHES
for target in PATCHES:
    importlib.import_module(target)
print('STATE' + json.dumps(patch_failures()))
'''


def test_any_runtime_module_imported_first_leaves_every_patch_applied():
    """Import order must not decide whether FOCUS runs. ``focus_state`` imported first (before anything had
    loaded ``lmdeploy.pytorch.strategies.dllm``) loaded that package mid-way through its own import; the
    strategy-factory patch then imported the factory, which imports ``focus_state``: the patch failed, and
    delayed cache / FOCUS were refused for the process. That module and 11 others drawn afresh each run (all
    105 take ~3 min on two cores), each first in a fresh interpreter."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import lmdeploy_focus
    root = Path(lmdeploy_focus.__file__).parent
    modules = sorted('.'.join(('lmdeploy_focus', ) + p.relative_to(root).with_suffix('').parts).removesuffix('.__init__')
                     for p in root.rglob('*.py'))
    first = 'lmdeploy_focus.models.step_state.focus_state'
    assert first in modules and len(modules) > 50
    modules = [first] + random.sample([m for m in modules if m != first], 11)
    with ThreadPoolExecutor(4) as pool:
        outs = dict(zip(modules, pool.map(lambda m: run_python(IMPORTED_FIRST, args=[m]), modules)))
    failed = {m: state_of(out) for m, out in outs.items() if state_of(out)}
    assert failed == {}, f'modules imported first: {modules}'


UNPICKLED_WITHOUT_PTH = '''
import json, pickle, sys
import lmdeploy_focus._bootstrap as bootstrap
if bootstrap._finder is not None:  # a process started without the plugin's .pth (a source checkout)
    sys.meta_path.remove(bootstrap._finder)
    bootstrap._finder = None
import lmdeploy.pytorch.configurations  # upstream's model-config builders, unpatched
from lmdeploy_focus.patch import applied_patches
before = 'lmdeploy.pytorch.configurations' in applied_patches()
config = pickle.loads(open(sys.argv[1], 'rb').read())
print('STATE' + json.dumps([before, 'lmdeploy.pytorch.configurations' in applied_patches(),
                            type(config).__module__, config.dllm_enable_focus, config.dllm_focus_alpha]))
'''


def test_a_process_that_unpickles_a_focus_config_runs_the_plugin(tmp_path):
    """Upstream sends the engine config to processes it spawns (its engine checker pool on CUDA, the mp engine,
    executor workers). Where the plugin was activated by ``lmdeploy_focus.activate()`` instead of its .pth, such a
    process ran stock: upstream's checks there refused LLaDA2 (no bos_token_id without our builder). Found by a
    bug-hunting review."""
    import pickle

    from lmdeploy.messages import PytorchEngineConfig
    data = tmp_path / 'config.pkl'
    data.write_bytes(pickle.dumps(PytorchEngineConfig(dllm_enable_focus=True, dllm_focus_alpha=1.75)))
    assert state_of(run_python(UNPICKLED_WITHOUT_PTH, args=[str(data)])) == [
        False, True, 'lmdeploy_focus.config.engine_config', True, 1.75]
