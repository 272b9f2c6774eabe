"""What the wheel's metadata says about the ``dev`` extra (setup.py): a local build points at this
checkout's ``dev/``; a build for publishing (``LMDEPLOY_FOCUS_PUBLISH=1``) must not carry a local path."""
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_module():
    spec = importlib.util.spec_from_file_location('lmdeploy_focus_setup_under_test', ROOT / 'setup.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() does not run
    return module


def test_dev_extra_local_build_points_at_this_checkout():
    dev = _setup_module().extras_require(publish=False)['dev']
    assert f'lmdeploy-focus-dev @ {(ROOT / "dev").as_uri()}' in dev
    assert {'pytest', 'matplotlib'} <= set(dev)


def test_dev_extra_for_publishing_names_the_dev_package_by_version():
    dev = _setup_module().extras_require(publish=True)['dev']
    assert not any('file:' in r or '@' in r for r in dev), dev
    version = re.search(r'^version = "([^"]+)"', (ROOT / 'dev' / 'pyproject.toml').read_text(), re.M).group(1)
    assert f'lmdeploy-focus-dev=={version}' in dev
