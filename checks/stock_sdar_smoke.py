"""Stock LMDeploy DLLM decoding of a random-weight SDAR checkpoint with the plugin active.

Measures output throughput of ``pipeline()`` (greedy, ignore_eos, fixed prompt/output lengths) and
records the facts that show the plugin is active in the process: the engine-config class, the
strategy factory class and the block length the engine resolved from the ``-b<N>`` path suffix.

    python checks/stock_sdar_smoke.py CKPT_DIR --batch-sizes 64 256 --out result.json
"""
import argparse
import json
import platform
import time

import numpy as np


def random_text_prompts(model_path, batch_size, input_len, seed):
    """pipeline() takes text: random ids decoded to text, no chat template; returns the prompts and
    their re-encoded lengths."""
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)  # LLaDA2: remote-code config
    rng = np.random.default_rng(seed)
    prompts = [tokenizer.decode(rng.integers(1000, 150000, size=input_len).tolist()) for _ in range(batch_size)]
    return prompts, [len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]


def run_arm(model_path, batch_size, input_len, output_len, eager, unmasking, steps, seed, return_tokens=False,
            **engine_kwargs):
    import lmdeploy
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    engine_config = PytorchEngineConfig(max_batch_size=batch_size,
                                        max_prefill_token_num=max(8192, batch_size * 32),
                                        eager_mode=eager,
                                        dllm_unmasking_strategy=unmasking,
                                        dllm_denoising_steps=steps,
                                        cache_max_entry_count=0.7,
                                        **engine_kwargs)
    prompts, prompt_lens = random_text_prompts(model_path, batch_size, input_len, seed)
    gen = GenerationConfig(max_new_tokens=output_len, ignore_eos=True, do_sample=False)
    with pipeline(model_path, backend_config=engine_config, log_level='WARNING') as pipe:
        engine = pipe.async_engine.engine
        factory = type(engine.strategy_factory)
        block_length = engine.strategy_factory.dllm_block_length
        pipe(prompts[:2], gen_config=GenerationConfig(max_new_tokens=32, ignore_eos=True), do_preprocess=False)
        stats, phases = _read_stats(), _read_phase_timing()  # drop the warm-up's counts
        start = time.perf_counter()
        outputs = pipe(prompts, gen_config=gen, do_preprocess=False)
        elapsed = time.perf_counter() - start
        stats, phases = _read_stats(), _read_phase_timing()
    generated = [len(o.token_ids) for o in outputs]
    tokens = dict(token_ids=[list(o.token_ids) for o in outputs]) if return_tokens else {}
    return dict(**tokens,
                batch_size=batch_size,
                eager_mode=eager,
                seconds=round(elapsed, 3),
                mean_input_tokens=round(float(np.mean(prompt_lens)), 1),
                generated_tokens=int(sum(generated)),
                all_outputs_full_length=all(g == output_len for g in generated),
                output_tok_per_s=round(sum(generated) / elapsed, 1),
                engine_config_class=f'{type(engine_config).__module__}.{type(engine_config).__name__}',
                strategy_factory_class=f'{factory.__module__}.{factory.__name__}',
                resolved_block_length=block_length,
                lmdeploy_version=lmdeploy.__version__,
                dllm_stats=stats,
                **({'phase_timing': phases} if phases else {}))


def _read_phase_timing():
    """Per-phase decode-step timing (LMDEPLOY_FOCUS_PHASE_TIMING=1), or None."""
    try:
        from lmdeploy_focus.stats import read_phase_timing
    except ImportError:
        return None
    timing = [t for t in read_phase_timing(reset=True) if t['steps']]
    return timing[-1] if timing else None


def _read_stats():
    """DLLM run statistics (dllm_track) with derived ratios, or None without tracking."""
    try:
        from lmdeploy_focus.stats import read_run_report
    except ImportError:
        return None
    return read_run_report(reset=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_path')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[64, 256])
    parser.add_argument('--input-len', type=int, default=256)
    parser.add_argument('--output-len', type=int, default=256)
    parser.add_argument('--unmasking', default='low_confidence_static')
    parser.add_argument('--denoising-steps', type=int, default=8)
    parser.add_argument('--eager-mode', action='store_true')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', required=True)
    args = parser.parse_args()

    import torch
    import transformers
    import triton
    runs = [run_arm(args.model_path, bs, args.input_len, args.output_len, args.eager_mode, args.unmasking,
                    args.denoising_steps, args.seed) for bs in args.batch_sizes]
    result = dict(gpu=torch.cuda.get_device_name(),
                  torch=torch.__version__,
                  triton=triton.__version__,
                  transformers=transformers.__version__,
                  python=platform.python_version(),
                  model=args.model_path,
                  input_len=args.input_len,
                  output_len=args.output_len,
                  unmasking=args.unmasking,
                  denoising_steps=args.denoising_steps,
                  date=time.strftime('%Y-%m-%d'),
                  runs=runs)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
