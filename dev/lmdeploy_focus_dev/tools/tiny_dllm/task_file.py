"""Write held-out tiny-model tasks as an eval_quality task file (JSONL: prompt, answer, scorer).

    python -m lmdeploy_focus_dev.tools.tiny_dllm.task_file OUT.jsonl --count 128

Prompts are the bare questions: eval_quality applies the checkpoint's chat template, which renders
them exactly as training and ``evaluate.chat_prompt_ids`` do.
"""
import argparse
import json

from .evaluate import TASK_MAX_NEW_TOKENS, heldout_tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('out')
    parser.add_argument('--count', type=int, default=128)
    args = parser.parse_args()
    with open(args.out, 'w') as f:
        for task in heldout_tasks(args.count):
            f.write(json.dumps(dict(prompt=task.question, answer=task.answer, scorer='exact_strip',
                                    max_new_tokens=TASK_MAX_NEW_TOKENS, meta=dict(kinds=task.kinds))) + '\n')


if __name__ == '__main__':
    main()
