"""README.md of an exported tiny SDAR checkpoint, filled from the training log and the eval."""
from pathlib import Path

from .sizes import ModelShape, parameter_count
from .tokenizer import EOS_ID, MASK_ID, PAD_ID


def _task_table(evaluation: dict) -> str:
    rows = ['| threshold | exact match | tokens / forward (tasks) | co-decoded: format / result / eos | '
            'tokens / forward (text) |', '| --- | --- | --- | --- | --- |']
    text = {r['threshold']: r for r in evaluation.get('text', [])}
    for r in evaluation.get('tasks', []):
        spans = r['co_decoded_by_span']
        co = ' / '.join(str(spans.get(k, '-')) for k in ('format', 'result', 'eos'))
        text_tpf = text.get(r['threshold'], {}).get('tokens_per_forward', '-')
        rows.append(f'| {r["threshold"]} | {r["exact_match"]} ({r["tasks"]} tasks) | {r["tokens_per_forward"]} | '
                    f'{co} | {text_tpf} |')
    return '\n'.join(rows)


def write_model_card(out: Path, size: str, shape: ModelShape, command: str, train_summary: dict, config: dict,
                     evaluation: dict | None) -> None:
    results = _task_table(evaluation) if evaluation else '(evaluation skipped)'
    capped = (f' Stopped by the time cap after {train_summary["steps_done"]} of {train_summary["planned_steps"]} '
              'planned steps: the command above reproduces the data and schedule, not this early stop.'
              if train_summary['stopped_by_time_cap'] else '')
    kinds = ''
    if evaluation and evaluation.get('tasks'):
        by_kind = evaluation['tasks'][0]['line_accuracy_by_kind']
        kinds = ('\nLine accuracy by sub-task kind at threshold ' + str(evaluation['tasks'][0]['threshold']) + ': ' +
                 ', '.join(f'{k} {v}' for k, v in by_kind.items()) + '.\n')
    text = f"""# tiny-sdar-{size}: a tiny SDAR block-diffusion model trained from scratch

Written by `lmdeploy_focus_dev.tools.train_tiny_dllm`. An offline stand-in for SDAR checkpoints: same
architecture and on-disk format (Qwen3-style decoder, `SDARForCausalLM`, block length 32 from the
folder name), trained to decode several tokens per step on easy spans and few on hard ones.

* shape: hidden {shape.hidden_size}, {shape.num_layers} layers, {shape.num_heads} heads / {shape.num_kv_heads} KV heads
  of dim {shape.head_dim}, SwiGLU {shape.intermediate_size}, untied head, RoPE theta {shape.rope_theta:g};
  {parameter_count(shape) / 1e6:.2f} M parameters, bf16 weights.
* tokenizer: byte-level (ids 0-255 are UTF-8 bytes), `<|endoftext|>` {PAD_ID} (pad),
  `<|im_start|>` {PAD_ID + 1}, `<|im_end|>` {EOS_ID} (eos), `<|MASK|>` {MASK_ID} (`mask_token_id`);
  ChatML chat template.
* data: King James Bible (Debian `bible-kjv-text`, public domain) and synthetic multi-part tasks
  (copy, pattern, reverse, sort, key lookup, addition), 50/50; block-diffusion loss (two-copy layout,
  t ~ U({config['eps']}, 1), 1/t-weighted masked CE), block length {config['block_length']},
  sequences of {config['seq_len']} tokens.
* training: `{command}`
  (seed {config['seed']}, {train_summary['steps_done']} steps of batch {config['batch_size']}, peak lr {config['lr']},
  {train_summary['train_seconds']} s; loss {train_summary['first_loss']} -> {train_summary['final_loss']},
  masked CE at the end {train_summary['final_masked_ce']}). Curve: `train_log.json`.{capped}

## Results (reference decode loop, greedy, low_confidence_dynamic)

{results}
{kinds}
"Co-decoded" is, for each answer token, how many tokens the forward that decoded it decoded in all.
Details and samples: `eval.json`.

## Use

Serve with LMDeploy's PyTorch engine and the plugin like any SDAR checkpoint (`dllm_block_length=32`
is read from the folder name). Prompts in the training format: the chat template with one user
turn of numbered sub-questions, e.g. `1) 4821 + 9377`, `2) reverse kqmfjw`, `3) sort 5820193`.
"""
    (out / 'README.md').write_text(text, encoding='utf-8')
