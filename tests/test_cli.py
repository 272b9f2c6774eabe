"""The stock ``lmdeploy`` command gains the FOCUS flags (run as real subprocesses)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import run_python

LMDEPLOY = shutil.which('lmdeploy') or os.path.join(os.path.dirname(sys.executable), 'lmdeploy')

FLAGS = ['--dllm-enable-delayed-cache', '--dllm-enable-focus', '--focus', '--dllm-focus-alpha', '--dllm-track']


def lmdeploy_cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != 'LMDEPLOY_FOCUS_DISABLE'}
    full_env.update(env or {})
    return subprocess.run([LMDEPLOY, *args], capture_output=True, text=True, env=full_env, timeout=300)


@pytest.mark.parametrize('command', [['serve', 'api_server'], ['chat']])
def test_help_lists_the_flags_with_defaults(command):
    out = lmdeploy_cli(*command, '--help')
    assert out.returncode == 0, out.stderr
    # openai-harmony is installed (requirements/test_cpu.txt; lmdeploy's own dependency on GPU machines)
    assert 'openai_harmony import failed' not in out.stderr
    help_text = ' '.join(out.stdout.split())
    for flag in FLAGS:
        assert flag in help_text
    alpha_help = help_text.rsplit('--dllm-focus-alpha DLLM_FOCUS_ALPHA', 1)[1][:200]
    assert 'Default: 1.5' in alpha_help


def test_disabled_plugin_gives_the_stock_cli():
    out = lmdeploy_cli('serve', 'api_server', '--help', env={'LMDEPLOY_FOCUS_DISABLE': '1'})
    assert out.returncode == 0
    assert '--dllm-enable-focus' not in out.stdout and '--dllm-block-length' in out.stdout


# Runs the real CLI entry point with the server start replaced by a probe that prints the engine
# config it would have served with; the CUDA check is told there is a GPU (the probe needs none).
SERVE_PROBE = '''
import json, sys
import lmdeploy_focus.cli.preflight as preflight
preflight.cuda_problem = lambda device: None
from lmdeploy.serve.openai import api_server as server  # lmdeploy.serve is also a function name
def serve(model_path, backend=None, backend_config=None, **kwargs):
    cfg = backend_config
    print('PROBE' + json.dumps(dict(cls=type(cfg).__module__, backend=backend, focus=cfg.dllm_enable_focus,
                                    delayed=cfg.dllm_enable_delayed_cache, alpha=cfg.dllm_focus_alpha,
                                    track=cfg.dllm_track, hf_overrides=cfg.hf_overrides,
                                    block=cfg.dllm_block_length)))
server.serve = serve
from lmdeploy.cli.entrypoint import run
sys.argv = ['lmdeploy'] + sys.argv[1:]
run()
'''


def serve_probe(model_dir, *flags):
    out = run_python(SERVE_PROBE, args=['serve', 'api_server', model_dir, '--backend', 'pytorch', '--max-batch-size',
                                        '8', *flags])
    lines = [line for line in out.stdout.splitlines() if line.startswith('PROBE')]
    return out, (json.loads(lines[0][5:]) if lines else None)


def test_api_server_focus_without_alpha_uses_the_default(sdar_dir):
    out, probe = serve_probe(sdar_dir('SDAR-tiny-b32'), '--focus', '--dllm-track', '--hf-overrides',
                             '{"rms_norm_eps": 1e-05}')
    assert probe is not None, out.stderr[-3000:]
    assert probe['cls'] == 'lmdeploy_focus.config.engine_config'
    assert (probe['focus'], probe['delayed'], probe['alpha'], probe['track']) == (True, True, 1.5, True)
    assert probe['hf_overrides'] == {'rms_norm_eps': 1e-05, 'dllm_focus': dict(enable_delayed_cache=True,
                                                                              enable_focus=True, focus_alpha=1.5,
                                                                              track=True,
                                                                              delayed_cache_commit='exact',
                                                                              focus_policy='importance',
                                                                              focus_shadow=False, focus_auto_shadow_every=16,
                    focus_auto_target_recall=0.95, focus_auto_alpha_max=4.0, focus_auto_margin=0.05,
                    stock_step_rows=64)}


def test_api_server_explicit_flags(sdar_dir):
    out, probe = serve_probe(sdar_dir('SDAR-tiny'), '--dllm-enable-delayed-cache', '--dllm-focus-alpha', '2.5',
                             '--dllm-block-length', '16', '--dllm-delayed-cache-commit', 'fast')
    assert probe is not None, out.stderr[-3000:]
    assert (probe['focus'], probe['delayed'], probe['alpha'], probe['block']) == (False, True, 2.5, 16)
    assert probe['hf_overrides']['dllm_focus']['delayed_cache_commit'] == 'fast'


def test_api_server_shadow_and_policy_flags(sdar_dir):
    out, probe = serve_probe(sdar_dir('SDAR-tiny'), '--dllm-focus-shadow', '--dllm-focus-policy', 'leftmost')
    assert probe is not None, out.stderr[-3000:]
    options = probe['hf_overrides']['dllm_focus']
    assert (options['enable_focus'], options['focus_shadow'], options['focus_policy']) == (True, True, 'leftmost')


def test_api_server_without_flags_is_stock(sdar_dir):
    out, probe = serve_probe(sdar_dir('SDAR-tiny'))
    assert probe is not None, out.stderr[-3000:]
    assert probe['hf_overrides'] is None and not probe['focus']


@pytest.mark.parametrize('flags, message', [
    (['--focus', '--dllm-focus-alpha', '0.5'], 'dllm_focus_alpha must be >= 1.0'),
    (['--focus', '--dllm-focus-alpha', '1e39'], 'dllm_focus_alpha must be <= 10000'),
    (['--focus', '--dllm-focus-alpha', 'abc'], 'argument --dllm-focus-alpha'),
    # float()'s message ("could not convert string to float: 'Auto'") never named the word the flag takes
    (['--focus', '--dllm-focus-alpha', 'Auto'], "argument --dllm-focus-alpha: a number >= 1.0 or 'auto', got 'Auto'"),
])
def test_bad_alpha_is_a_usage_error(sdar_dir, flags, message):
    out, probe = serve_probe(sdar_dir('SDAR-tiny'), *flags)
    assert probe is None and out.returncode == 2
    assert message in out.stderr and 'Traceback' not in out.stderr


CHAT_PROBE = '''
import json, sys
import lmdeploy_focus.cli.preflight as preflight
preflight.cuda_problem = lambda device: None
import lmdeploy.cli.chat as chat
def pipeline(model_path, backend_config=None, **kwargs):
    cfg = backend_config
    from lmdeploy.pipeline import Pipeline
    reports = hasattr(Pipeline.stream_infer, '__lmdeploy_focus_upstream__')  # a failed turn says why
    print('PROBE' + json.dumps(dict(options=cfg.focus_options().to_dict(), hf_overrides=cfg.hf_overrides,
                                    reports_errors=reports)))
    raise SystemExit(0)
chat.pipeline = pipeline
from lmdeploy.cli.entrypoint import run
sys.argv = ['lmdeploy'] + sys.argv[1:]
run()
'''


def test_chat_flags_reach_the_engine_config(sdar_dir):
    out = run_python(CHAT_PROBE, args=['chat', sdar_dir('SDAR-tiny'), '--backend', 'pytorch', '--focus',
                                       '--dllm-focus-alpha', '3'])
    lines = [line for line in out.stdout.splitlines() if line.startswith('PROBE')]
    assert lines, out.stderr[-3000:]
    probe = json.loads(lines[0][5:])
    expected = dict(enable_delayed_cache=True, enable_focus=True, focus_alpha=3.0, track=False,
                    delayed_cache_commit='exact', focus_policy='importance', focus_shadow=False, focus_auto_shadow_every=16,
                    focus_auto_target_recall=0.95, focus_auto_alpha_max=4.0, focus_auto_margin=0.05,
                    stock_step_rows=64)
    assert probe['options'] == expected and probe['hf_overrides'] == {'dllm_focus': expected}
    assert probe['reports_errors']


CHAT_PAGE_PROBE = CHAT_PROBE.replace("options=cfg.focus_options().to_dict(),",
                                     "page=(cfg.block_size, cfg.kernel_block_size), block=cfg.dllm_block_length,")


def chat_probe(model_dir, *flags, probe=CHAT_PROBE):
    out = run_python(probe, args=['chat', model_dir, '--backend', 'pytorch', *flags])
    lines = [line for line in out.stdout.splitlines() if line.startswith('PROBE')]
    return out, (json.loads(lines[0][5:]) if lines else None)


def test_chat_takes_the_kv_page_a_long_block_needs(sdar_dir):
    """FOCUS at block length 128 needs a 128-token page: the error said to pass --cache-block-seq-len 128, which chat
    lacked (found by an options hunt). Chat sets it as serve does, the kernel page with it."""
    model = sdar_dir('SDAR-tiny')
    out, probe = chat_probe(model, '--focus', '--dllm-block-length', '128', '--cache-block-seq-len', '128',
                            probe=CHAT_PAGE_PROBE)
    assert probe is not None, out.stderr[-3000:]
    assert (probe['page'], probe['block']) == ([128, 128], 128)
    out, probe = chat_probe(model, '--cache-block-seq-len', '32', probe=CHAT_PAGE_PROBE)
    # the kernel page moves too: the default config's 64 would not divide a 32-token page
    assert probe is not None and probe['page'] == [32, 32], out.stderr[-3000:]
    out, probe = chat_probe(model, probe=CHAT_PAGE_PROBE)
    assert probe is not None and probe['page'] == [64, 64], out.stderr[-3000:]  # left out: upstream's default


@pytest.mark.parametrize('command, flags, message', [
    ('serve', ['--focus', '--quant-policy', '8'], 'set quant_policy=0 (drop --quant-policy)'),
    # the engine config refused these inside upstream's runner, and so did the flags folded into --hf-overrides: a
    # traceback each, exit status 1 (found by an options hunt)
    ('serve', ['--focus', '--tp', '2'], 'with tensor parallelism (tp=2) have never run on GPUs'),
    ('serve', ['--focus', '--dllm-focus-alpha', '2', '--hf-overrides', '{"dllm_focus": {"focus_alpha": 3}}'],
     '--dllm-focus-alpha 2.0 conflicts with --hf-overrides dllm_focus.focus_alpha=3: give the option once'),
    ('serve', ['--hf-overrides', '[1]'], '--hf-overrides must be a JSON object of config keys'),  # a TypeError
    # accepted: eagle3 would have driven the sparse step with a draft, dflash decoded the DLLM autoregressively
    ('serve', ['--focus', '--speculative-algorithm', 'eagle3', '--speculative-draft-model', '/tmp'],
     "do not run with speculative decoding (method 'eagle3'): drop --speculative-algorithm"),
    # chat: the engine config's checks ran deep in the engine start (build_pipe sets the flags after construction)
    ('chat', ['--focus', '--dllm-block-length', '128'], 'Set block_size=128 (--cache-block-seq-len 128)'),
    ('chat', ['--focus', '--tp', '2'], 'with tensor parallelism (tp=2) have never run on GPUs'),
    ('chat', ['--cache-block-seq-len', '48'], "argument --cache-block-seq-len: must be a power of two >= 16 (tokens in "
                                              "a KV page), got '48'"),
    ('chat', ['--dllm-enable-delayed-cache', '--speculative-algorithm', 'dflash', '--speculative-draft-model', '/tmp'],
     "do not run with speculative decoding (method 'dflash'): drop --speculative-algorithm"),
    ('chat', ['--dllm-block-length', '0'], 'dllm_block_length'),  # the fields' own checks, stock decoding too
])
def test_refused_flags_are_one_line_before_the_engine(sdar_dir, command, flags, message):
    probe_with, name = dict(serve=(serve_probe, 'lmdeploy serve api_server'), chat=(chat_probe, 'lmdeploy chat'))[command]
    out, probe = probe_with(sdar_dir('SDAR-tiny'), *flags)
    assert probe is None and out.returncode == 2
    _one_line_error(out, name, message)


# ---------------------------------------------------------------- a newcomer's mistakes: one line each
def _one_line_error(out, command, fragment):
    lines = out.stderr.strip().splitlines()
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert lines and lines[-1].startswith(f'{command}: error: ') and fragment in lines[-1], out.stderr[-3000:]


@pytest.mark.parametrize('command', [['serve', 'api_server'], ['chat']])
@pytest.mark.parametrize('path', ['/nonexistent', './no/such/model', 'not a repo id'])
def test_a_missing_model_path_is_a_usage_error(command, path):
    # upstream handed it to the hub client: an HFValidationError traceback
    out = lmdeploy_cli(*command, path, '--focus')
    assert out.returncode == 2 and 'usage:' not in out.stderr
    _one_line_error(out, f"lmdeploy {' '.join(command)}", f"argument model_path: {path!r} is not an existing "
                    'directory nor a model repo id (owner/name)')


def test_model_path_check_lets_directories_and_repo_ids_through(tmp_path, monkeypatch):
    import argparse
    from lmdeploy_focus.cli import preflight
    assert preflight.model_path(str(tmp_path)) == str(tmp_path)
    for repo_id in ('JetLM/SDAR-8B-Chat-b32', 'inclusionAI/LLaDA2.0-mini', 'gpt2'):
        assert preflight.model_path(repo_id) == repo_id
    for bad in (str(tmp_path / 'missing'), '~/models/x', 'a/b/c', 'owner/na me'):
        with pytest.raises(argparse.ArgumentTypeError, match='is not an existing directory'):
            preflight.model_path(bad)
    # owner/name whose owner is a local folder: a mistyped path (it went to the hub client: a traceback after its
    # retries; found by a newcomer run-through)
    (tmp_path / 'models').mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(argparse.ArgumentTypeError,
                       match=r"'models/tiny-sdar' is not an existing directory.*\(models/ is a folder here"):
        preflight.model_path('models/tiny-sdar')
    assert preflight.model_path('JetLM/SDAR-8B-Chat-b32') == 'JetLM/SDAR-8B-Chat-b32'
    # another hub chosen (ModelScope): its ids and cache are its client's to judge, as for every other id
    monkeypatch.setenv('LMDEPLOY_USE_MODELSCOPE', 'true')
    assert preflight.model_path('models/tiny-sdar') == 'models/tiny-sdar'
    monkeypatch.delenv('LMDEPLOY_USE_MODELSCOPE')
    # a hub id the hub cache holds stays a hub id even where its owner is a folder here (a review's case)
    cache = tmp_path / 'hub'
    snapshot = cache / 'models--models--tiny-sdar' / 'snapshots' / 'abc'
    snapshot.mkdir(parents=True)
    (snapshot / 'config.json').write_text('{}')
    (cache / 'models--models--tiny-sdar' / 'refs').mkdir()
    (cache / 'models--models--tiny-sdar' / 'refs' / 'main').write_text('abc')
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(cache))
    assert preflight.model_path('models/tiny-sdar') == 'models/tiny-sdar'


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the message of a machine without CUDA')
@pytest.mark.parametrize('command', [['serve', 'api_server'], ['chat']])
def test_no_cuda_is_one_clear_line(sdar_dir, command):
    # upstream: AssertionError: Torch not compiled with CUDA enabled (from get_max_batch_size / the engine)
    out = lmdeploy_cli(*command, sdar_dir('SDAR-tiny-b32'), '--backend', 'pytorch', '--focus')
    assert out.returncode == 1
    import torch
    fragment = 'this torch build has no CUDA' if torch.version.cuda is None else 'no CUDA GPU is visible'
    _one_line_error(out, f"lmdeploy {' '.join(command)}", fragment)


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the message of a machine without CUDA')
@pytest.mark.parametrize('command', [['serve', 'api_server'], ['chat']])
def test_no_cuda_is_said_before_a_hub_model_is_fetched(command):
    """Upstream's entry point fetches a hub id before the runner: a CPU machine downloaded the checkpoint, or offline
    ended in the hub client's 93-line traceback (a newcomer run-through)."""
    out = lmdeploy_cli(*command, 'JetLM/SDAR-8B-Chat-b32', '--backend', 'pytorch', '--focus',
                       env={'HF_HUB_OFFLINE': '1'})
    assert out.returncode == 1
    _one_line_error(out, f"lmdeploy {' '.join(command)}", 'CUDA')


def test_cuda_problem_names_the_cause(monkeypatch):
    import torch
    from lmdeploy_focus.cli import preflight
    assert preflight.cuda_problem('ascend') is None  # other device backends check themselves
    monkeypatch.setattr(torch.version, 'cuda', None)
    assert 'this torch build has no CUDA' in preflight.cuda_problem('cuda')
    monkeypatch.setattr(torch.version, 'cuda', '12.8')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    assert "no CUDA GPU is visible" in preflight.cuda_problem('cuda')
    assert "CUDA_VISIBLE_DEVICES=''" in preflight.cuda_problem(None)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert preflight.cuda_problem('cuda') is None
    # a ROCm build drives --device cuda too (no torch.version.cuda, torch.version.hip set): it was refused as
    # 'no CUDA' for every serve / chat command once the plugin was installed
    monkeypatch.setattr(torch.version, 'cuda', None)
    monkeypatch.setattr(torch.version, 'hip', '6.2.41133', raising=False)
    assert preflight.cuda_problem('cuda') is None


def test_metrics_imply_tracking_also_for_options_given_as_hf_overrides():
    """api_server with metrics on: delayed cache / FOCUS switch --dllm-track on so /metrics carries the
    lmdeploy:dllm_* series, whether FOCUS came as a flag or inside --hf-overrides."""
    import argparse

    from lmdeploy_focus.cli.flags import add_focus_arguments, track_for_metrics
    parser = argparse.ArgumentParser()
    add_focus_arguments(parser)

    def parse(*flags, hf_overrides=None, disable_metrics=False):
        args = parser.parse_args(list(flags))
        args.hf_overrides, args.disable_metrics = hf_overrides, disable_metrics
        return args

    args = parse('--focus')
    assert track_for_metrics(args) is True and args.dllm_track
    args = parse(hf_overrides={'rope_theta': 5.0, 'dllm_focus': {'enable_focus': True}})
    track_for_metrics(args)
    assert args.hf_overrides == {'rope_theta': 5.0, 'dllm_focus': {'enable_focus': True, 'track': True}}
    assert not args.dllm_track  # the carried options stay the one source (the flags keep their defaults)
    for args in (parse('--focus', disable_metrics=True), parse(),
                 parse(hf_overrides={'dllm_focus': {'enable_focus': False}})):
        before = dict(vars(args))
        track_for_metrics(args)
        assert vars(args) == before  # metrics off, or nothing sparse: untouched
    # tracking turned off inside --hf-overrides is the user's choice: no implied --dllm-track to conflict with it
    # (fold_into_hf_overrides raised "--dllm-track True conflicts with ..." for a flag never given)
    from lmdeploy_focus.cli.flags import fold_into_hf_overrides
    args = parse('--focus', hf_overrides={'dllm_focus': {'track': False}})
    assert track_for_metrics(args) is False and not args.dllm_track
    fold_into_hf_overrides(args)
    assert args.hf_overrides['dllm_focus']['track'] is False and args.hf_overrides['dllm_focus']['enable_focus']
