"""Build hook: ship ``lmdeploy_focus.pth`` at the root of the wheel (it lands in site-packages).

The .pth line registers the plugin's post-import hook at interpreter start-up, so importing
lmdeploy activates FOCUS in every process, including the engine subprocess of ``api_server``.
The ``dev`` extra installs the development package that lives next to this file (``dev/``: oracle,
CPU harness, tools) from this checkout: a direct reference needs an absolute path, so it is made here.
That path ends up in the wheel's metadata, which is right for ``pip install '.[dev]'`` and wrong for a
wheel that leaves this machine: build those with ``LMDEPLOY_FOCUS_PUBLISH=1``, which names the dev
package by name and version instead (publish both distributions together).
Everything else is declared in pyproject.toml.
"""
import os
import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = 'lmdeploy_focus.pth'
DEV_DIR = Path(__file__).resolve().parent / 'dev'
# plus what the dev package does not declare itself: the test runner and the benchmark plots
DEV_EXTRA = ['pytest', 'matplotlib']


PUBLISH_ENV = 'LMDEPLOY_FOCUS_PUBLISH'


def extras_require(publish: bool = False) -> dict:
    dev = list(DEV_EXTRA)
    dev_project = DEV_DIR / 'pyproject.toml'
    if not dev_project.is_file():  # an sdist has no dev/
        if publish:
            raise RuntimeError(f'{PUBLISH_ENV}=1 needs the source checkout (dev/pyproject.toml names the dev '
                               f'package\'s version); build from the repository with pip wheel, not from an sdist')
        return {'dev': dev}
    if publish:
        version = re.search(r'^version = "([^"]+)"', dev_project.read_text(), re.M).group(1)
        dev.append(f'lmdeploy-focus-dev=={version}')
    else:
        dev.append(f'lmdeploy-focus-dev @ {DEV_DIR.as_uri()}')
    return {'dev': dev}


class BuildPyWithPth(build_py):

    def run(self):
        super().run()
        shutil.copy(Path(__file__).parent / PTH_FILE, Path(self.build_lib) / PTH_FILE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH_FILE)]


if __name__ == '__main__':  # setuptools runs this file as __main__; tests import extras_require
    setup(cmdclass={'build_py': BuildPyWithPth}, extras_require=extras_require(os.environ.get(PUBLISH_ENV) == '1'))
