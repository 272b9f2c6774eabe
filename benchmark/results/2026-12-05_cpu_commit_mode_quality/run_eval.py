"""benchmark/eval_quality.py, as the commands of this folder's README call it. When these results were made,
the arm ``focus_a1.5_fast`` (FOCUS importance, alpha 1.5, delayed-cache commit ``fast``) was added here at
run time; it is now a row of the one arm table (``focus-importance-fast``, alias ``focus-a1.5-fast``), so this
forwards unchanged: ``python run_eval.py <eval_quality args>``."""
import os
import runpy
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..'))

if __name__ == '__main__':
    sys.argv[0] = os.path.join(REPO, 'benchmark', 'eval_quality.py')
    runpy.run_path(sys.argv[0], run_name='__main__')
