"""Build hook: ship ``lmdeploy_focus.pth`` at the root of the wheel (it lands in site-packages).

The .pth line registers the plugin's post-import hook at interpreter start-up, so importing
lmdeploy activates FOCUS in every process, including the engine subprocess of ``api_server``.
Everything else is declared in pyproject.toml.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = 'lmdeploy_focus.pth'


class BuildPyWithPth(build_py):

    def run(self):
        super().run()
        shutil.copy(Path(__file__).parent / PTH_FILE, Path(self.build_lib) / PTH_FILE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib) / PTH_FILE)]


setup(cmdclass={'build_py': BuildPyWithPth})
