"""Result records: the printed table, the JSON file and the appended CSV row."""
import csv
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys

SCHEMA = 'lmdeploy-focus/profile_throughput/1'
CSV_NAME = 'profile_throughput.csv'
CSV_FIELDS = ('date', 'arm', 'status', 'model', 'dataset', 'concurrency', 'num_prompts', 'completed',
              'request_per_s', 'input_tok_per_s', 'output_tok_per_s', 'ttft_ms_mean', 'ttft_ms_p99',
              'tpot_ms_mean', 'itl_ms_mean', 'e2e_s_mean', 'e2e_s_p99', 'processed_per_generated',
              'generated_per_step', 'reason', 'json')


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001  absent or broken optional package: just not reported
        return None


def environment() -> dict:
    env = {name: _version(name) for name in ('torch', 'lmdeploy', 'lmdeploy_focus', 'transformers', 'triton')}
    env['python'] = platform.python_version()
    env['gpu'] = None
    try:
        import torch
        if torch.cuda.is_available():
            env['gpu'] = torch.cuda.get_device_name()
            env['cuda'] = torch.version.cuda
    except ImportError:
        pass
    try:
        env['git_commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                           timeout=5, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env['git_commit'] = None
    # the GPU suite sets this to the plugin wheel's name and sha256 (the device copy has no .git)
    env['plugin_build'] = os.environ.get('BENCH_PLUGIN_BUILD')
    # the plugin's experiment / debug switches change what a run measures (e.g. static rows)
    env['focus_env'] = {k: v for k, v in sorted(os.environ.items()) if k.startswith('LMDEPLOY_FOCUS_')}
    return env


def command_line(argv=None) -> str:
    argv = sys.argv if argv is None else argv
    return 'python ' + shlex.join([os.path.relpath(argv[0]) if os.path.exists(argv[0]) else argv[0]] + argv[1:])


def result_record(*, arm, status, model, dataset, concurrency, num_prompts, settings, engine_config, metrics=None,
                  dllm_metrics=None, reason=None, notes=None, env=None, command=None) -> dict:
    return {
        'schema': SCHEMA,
        'arm': arm,
        'status': status,  # ok | missing
        'reason': reason,
        'model': model,
        'dataset': dataset,
        'concurrency': concurrency,
        'num_prompts': num_prompts,
        'metrics': metrics,
        'dllm_metrics': dllm_metrics,
        'settings': settings,
        'engine_config': engine_config,
        'notes': notes,
        'environment': env if env is not None else environment(),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': command or command_line(),
    }


def result_stem(record: dict) -> str:
    model = re.sub(r'[^\w.-]', '_', os.path.basename(str(record['model']).rstrip('/')))
    return f"{record['arm']}_{model}_c{record['concurrency']}"


def write_json(record: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, result_stem(record) + '.json')
    with open(path, 'w') as f:
        json.dump(record, f, indent=2)
    return path


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def append_csv(record: dict, out_dir: str, json_path: str = '') -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CSV_NAME)
    m, dm = record.get('metrics') or {}, record.get('dllm_metrics') or {}
    row = {
        'date': record['date'], 'arm': record['arm'], 'status': record['status'], 'model': record['model'],
        'dataset': record['dataset'], 'concurrency': record['concurrency'], 'num_prompts': record['num_prompts'],
        'completed': m.get('completed'), 'request_per_s': m.get('request_per_s'),
        'input_tok_per_s': m.get('input_tok_per_s'), 'output_tok_per_s': m.get('output_tok_per_s'),
        'ttft_ms_mean': _get(m, 'ttft_ms', 'mean'), 'ttft_ms_p99': _get(m, 'ttft_ms', 'p99'),
        'tpot_ms_mean': _get(m, 'tpot_ms', 'mean'), 'itl_ms_mean': _get(m, 'itl_ms', 'mean'),
        'e2e_s_mean': _get(m, 'e2e_s', 'mean'), 'e2e_s_p99': _get(m, 'e2e_s', 'p99'),
        'processed_per_generated': dm.get('processed_per_generated'), 'generated_per_step': dm.get('generated_per_step'),
        'reason': record.get('reason') or (dm.get('reason') if dm.get('status') == 'missing' else None),
        'json': json_path,
    }
    new = not os.path.exists(path)
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    return path


def _fmt(v, nd=1):
    return 'n/a' if v is None else (f'{v:,.{nd}f}' if isinstance(v, float) else f'{v:,}')


def format_table(record: dict) -> str:
    title = f" {record['arm']} | {os.path.basename(str(record['model']).rstrip('/'))} | concurrency {record['concurrency']} "
    lines = [title.center(72, '=')]
    if record['status'] != 'ok':
        lines += [f"MISSING: {record['reason']}", '=' * 72]
        return '\n'.join(lines)
    m = record['metrics']
    rows = [
        ('duration (s)', _fmt(m['duration_s'], 2)),
        ('requests completed / failed', f"{m['completed']} / {m['failed']} (repeat-stopped {m['repeat_stopped']})"),
        ('input / output tokens', f"{m['input_tokens']:,} / {m['output_tokens']:,}"),
        ('request throughput (req/s)', _fmt(m['request_per_s'], 3)),
        ('input throughput (tok/s)', _fmt(m['input_tok_per_s'])),
        ('output throughput (tok/s)', _fmt(m['output_tok_per_s'])),
        ('total throughput (tok/s)', _fmt(m['total_tok_per_s'])),
    ]
    lines += [f'{k:<34}{v:>38}' for k, v in rows]
    lines.append(f"{'':<18}{'mean':>13}{'p50':>13}{'p95':>14}{'p99':>14}")
    for key, label in (('ttft_ms', 'TTFT (ms)'), ('tpot_ms', 'TPOT (ms)'), ('itl_ms', 'ITL (ms)'), ('e2e_s', 'E2E (s)')):
        d = m.get(key)
        cells = ['n/a'] * 4 if d is None else [_fmt(d[k], 2) for k in ('mean', 'p50', 'p95', 'p99')]
        lines.append(f'{label:<18}{cells[0]:>13}{cells[1]:>13}{cells[2]:>14}{cells[3]:>14}')
    dm = record.get('dllm_metrics')
    if dm is not None:
        if dm.get('status') == 'missing':
            lines.append(f"DLLM metrics: missing ({dm['reason']})")
        else:
            for k in ('processed_tokens', 'generated_tokens', 'denoising_steps', 'processed_per_generated',
                      'generated_per_step'):
                lines.append(f'{k:<34}{_fmt(dm.get(k), 3):>38}')
    lines.append('=' * 72)
    return '\n'.join(lines)
