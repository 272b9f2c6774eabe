"""Build hook: ship ``lmdeploy_focus.pth`` at the root of the wheel (it lands in site-packages).

The .pth line registers the plugin's post-import hook at interpreter start-up, so importing
lmdeploy activates FOCUS in every process, including the engine subprocess of ``api_server``.
The ``dev`` extra installs the development package that lives next to this file (``dev/``: oracle,
CPU harness, tools) from this checkout: a direct reference needs an absolute path, so it is made here.
Everything else is declared in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = 'lmdeploy_focus.pth'
DEV_DIR = Path(__file__).resolve().parent / 'dev'
# plus what the dev package does not declare itself: the test runner and the benchmark plots
DEV_EXTRA = ['pytest', 'matplotlib']


def extras_require() -> dict:
    dev = list(DEV_EXTRA)
    if (DEV_DIR / 'pyproject.toml').is_file():  # a source checkout (an sdist has no dev/)
        dev.append(f'lmdeploy-focus-dev @ {DEV_DIR.as_uri()}')
    return {'dev': dev}


class BuildPyWithPth(build_py):

    def run(self):
        super().run()
        shutil.copy(Path(__file__).parent / PTH_FILE, Path(self.build_lib) / PTH_FILE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH_FILE)]


setup(cmdclass={'build_py': BuildPyWithPth}, extras_require=extras_require())
