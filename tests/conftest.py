"""Shared fixtures. The suite runs against the installed package (``pip install .``)."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

import lmdeploy_focus

# With the .pth installed this is a no-op; it keeps a plain source checkout usable too.
lmdeploy_focus.activate()


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason='needs CUDA')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


BENCHMARK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmark')


def load_benchmark_script(name: str):
    """``benchmark/<name>.py`` imported as a module (the benchmark scripts are not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARK_DIR, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_python(code: str, env: dict | None = None, args: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (activation is per process)."""
    full_env = {k: v for k, v in os.environ.items() if k != 'LMDEPLOY_FOCUS_DISABLE'}
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *(args or [])],
                          capture_output=True,
                          text=True,
                          env=full_env,
                          timeout=300)


def write_hf_config(directory, **fields) -> str:
    """A checkpoint folder holding only config.json (enough for ModelConfig.from_pretrained)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(fields, f)
    return str(directory)


def qwen3_like_config(**overrides) -> dict:
    cfg = dict(hidden_size=64,
               intermediate_size=128,
               num_hidden_layers=2,
               num_attention_heads=4,
               num_key_value_heads=2,
               head_dim=16,
               rms_norm_eps=1e-6,
               rope_theta=1e6,
               rope_parameters={'rope_type': 'default', 'rope_theta': 1e6},
               max_position_embeddings=4096,
               vocab_size=512,
               bos_token_id=1,
               eos_token_id=2,
               tie_word_embeddings=False,
               torch_dtype='float32')
    cfg.update(overrides)
    return cfg


@pytest.fixture
def sdar_dir(tmp_path):
    """Factory for a tiny SDAR config folder under a chosen name."""

    def make(name='SDAR-tiny', **overrides):
        cfg = qwen3_like_config(architectures=['SDARForCausalLM'], model_type='sdar', **overrides)
        return write_hf_config(tmp_path / name, **cfg)

    return make


class FocusLogRecords(logging.Handler):
    """Collects records of the plugin logger (LMDeploy's logger does not propagate to root)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG):
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def focus_logs():
    logger = logging.getLogger('lmdeploy.focus')
    handler = FocusLogRecords()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
