"""Writes sharegpt_sample.json: synthetic ShareGPT-format conversations for smoke runs of the drivers.

Written by us from templates (no real chat data); 320 conversations so that batch size 256 has
enough distinct prompts. Deterministic: ``python benchmark/data/make_sharegpt_sample.py``.
"""
import json
import os
import random

TOPICS = ['block diffusion decoding', 'paged attention', 'the KV cache', 'continuous batching', 'CUDA graphs',
          'tensor parallelism', 'tokenisation', 'mixed precision', 'speculative decoding', 'prefix caching',
          'quantisation', 'rotary position embeddings', 'mixture of experts', 'beam search', 'greedy decoding',
          'sparse attention', 'layer normalisation', 'gradient checkpointing', 'data parallel training', 'FlashAttention']
ASKS = ['Explain {t} to a new engineer in a few paragraphs.',
        'What are the main trade-offs of {t} when serving many users at once?',
        'Write a short checklist for debugging a slow service that uses {t}.',
        'Compare {t} with {u}. When would you pick each?',
        'Give three common mistakes people make with {t}, and how to avoid them.',
        'Summarise how {t} affects latency and throughput, with a small numeric example.',
        'I am writing a design note about {t}. Suggest an outline with headings.',
        'Why does {t} matter for large batch sizes on modern GPUs?']
SYSTEMS = ['You are a concise technical assistant.', 'You answer with short, precise explanations.']
FILLER = ('The answer depends on the workload. Measure first, then change one thing at a time. '
          'Batch size, sequence length and memory bandwidth interact, so a change that helps one case can hurt another. ')


def conversation(rng: random.Random, i: int) -> dict:
    t, u = rng.sample(TOPICS, 2)
    turns = []
    if rng.random() < 0.25:
        turns.append({'from': 'system', 'value': rng.choice(SYSTEMS)})
    question = rng.choice(ASKS).format(t=t, u=u)
    if rng.random() < 0.3:
        question += ' Context: ' + FILLER * rng.randint(1, 2)
    turns.append({'from': 'human', 'value': question})
    turns.append({'from': 'gpt', 'value': f'{t.capitalize()}: ' + FILLER * rng.randint(1, 2)})
    if rng.random() < 0.3:  # a follow-up turn; only the first exchange becomes a prompt
        turns += [{'from': 'human', 'value': 'Can you shorten that?'}, {'from': 'gpt', 'value': 'Measure, then tune.'}]
    return {'id': f'synthetic-{i:04d}', 'conversations': turns}


def main():
    rng = random.Random(0)
    data = [conversation(rng, i) for i in range(320)]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sharegpt_sample.json')
    with open(path, 'w') as f:
        f.write('[\n' + ',\n'.join(json.dumps(c, ensure_ascii=False) for c in data) + '\n]\n')
    print(f'wrote {len(data)} conversations to {path}')


if __name__ == '__main__':
    main()
