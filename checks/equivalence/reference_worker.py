"""The CPU reference run of one mode, as a separate process (it overlaps with the GPU arms).

    python checks/equivalence/reference_worker.py SPEC.json OUT.pt

SPEC: checkpoint, prompts, meta (block length, mask token, unmasking, probe ids), max_new_tokens,
delayed_cache, commit_mode, dtype ('float64' / 'float32'), threads, chunk_size. OUT holds the
per-sequence step summaries (no full logits), the generated tokens and the run time.
"""
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

if __package__ in (None, ''):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from equivalence.sequences import RecordedSequence, SeqStep  # noqa: E402


def save_sequences(path, sequences: list[RecordedSequence], **extra) -> None:
    payload = dict(sequences=[dict(prompt_ids=s.prompt_ids, steps=[asdict(st) for st in s.steps])
                              for s in sequences], **extra)
    torch.save(payload, path)


def load_sequences(path) -> tuple[list[RecordedSequence], dict]:
    payload = torch.load(path, weights_only=True)
    sequences = [RecordedSequence(s['prompt_ids'], [SeqStep(**st) for st in s['steps']])
                 for s in payload.pop('sequences')]
    return sequences, payload


def main(spec_path: str, out_path: str) -> None:
    import lmdeploy_focus
    lmdeploy_focus.activate()  # no-op with the .pth installed; upstream's unmasker is used either way
    from equivalence.reference_mode import load_reference_model, run_reference

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec.get('threads', 4))
    start = time.perf_counter()
    model, _ = load_reference_model(spec['checkpoint'], getattr(torch, spec.get('dtype', 'float64')))
    sequences, tokens = run_reference(model, spec['prompts'], spec['meta'], spec['max_new_tokens'], None,
                                      spec['delayed_cache'], spec.get('commit_mode', 'exact'),
                                      spec.get('chunk_size', 4))
    save_sequences(out_path, sequences, tokens=tokens, seconds=round(time.perf_counter() - start, 1),
                   dtype=spec.get('dtype', 'float64'), delayed_cache=spec['delayed_cache'],
                   commit_mode=spec.get('commit_mode', 'exact'))


if __name__ == '__main__':
    main(*sys.argv[1:3])
