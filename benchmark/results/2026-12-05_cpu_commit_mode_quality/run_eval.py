"""benchmark/eval_quality.py with one extra arm, ``focus_a1.5_fast`` (FOCUS importance, alpha 1.5,
delayed-cache commit ``fast``); ``focus_a1.5`` is the same with the default commit (``exact``).
Everything else (arguments, outputs) is eval_quality.py's: ``python run_eval.py <eval_quality args>``.
The eval's own arm table has no FOCUS arm with the fast commit; this adds it without editing it."""
import importlib.util
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))
spec = importlib.util.spec_from_file_location('eval_quality', os.path.join(REPO, 'benchmark', 'eval_quality.py'))
eval_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_quality)
eval_quality.arms.ARMS['focus_a1.5_fast'] = {**eval_quality.arms._focus(1.5), 'dllm_delayed_cache_commit': 'fast'}

if __name__ == '__main__':
    try:
        eval_quality.main(sys.argv[1:])
    except eval_quality.BenchmarkInputError as e:
        raise SystemExit(f'eval_quality: error: {e}') from None
