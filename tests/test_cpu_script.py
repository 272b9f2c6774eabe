"""scripts/test_cpu.sh (the README's test command and CI's), in what it refuses before installing anything."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_active_cuda_virtualenv_is_refused_before_its_torch_is_replaced(tmp_path):
    """The script installs the CPU build of torch into the active virtualenv: in lmdeploy's CUDA environment it
    replaced CUDA torch, and every GPU test there then skipped (a newcomer run-through)."""
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'site' / 'torch').mkdir(parents=True)
    (venv / 'site' / 'torch' / '__init__.py').write_text("class version:\n    cuda = '13.0'\n")
    python = venv / 'bin' / 'python'
    # answers the script's `python -c` probes with the fake CUDA torch; anything else (pip) fails instead of
    # installing into the environment running this test
    python.write_text(f'#!/bin/sh\n[ "$1" = -c ] || {{ echo "fake python: $*" >&2; exit 3; }}\n'
                      f'PYTHONPATH={venv / "site"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f'{venv / "bin"}{os.pathsep}{os.environ["PATH"]}')
    out = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'test_cpu.sh'), '--co'], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f'the active virtualenv ({venv}) has a CUDA build of torch' in out.stderr
    assert 'installed torch' not in out.stdout
