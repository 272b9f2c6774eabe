"""Compare two DLLM decoding runs step by step, per sequence, and classify the first difference.

    python checks/equivalence/compare_steps.py RECORDING_A RECORDING_B [--out result.json] [--factor 2]

Recordings are directories written with ``LMDEPLOY_FOCUS_RECORD_STEPS`` (same prompts, same
rules). For each sequence (matched by prompt) the k-th steps of both runs are compared until the
first step whose decision differs (see ``decisions``); before it, the step inputs must be
identical and the logits (top-1 values and the probe logits, rows processed in both runs) must
agree within ``tolerances.logits_tolerance``. The first difference is a *near-tie* when its
deciding gap is at most ``factor`` times the noise measured on the earlier steps and at the diverging
step itself (the largest disagreement over its masked rows, on identical inputs).

Verdict per sequence: ``identical``; ``near_tie``; ``mismatch`` (first difference not a near-tie);
``logits_out_of_tolerance`` (decisions explained but the earlier logits disagree beyond tolerance);
``inputs_diverged`` (inputs differ with no decision difference before: a structural problem);
``length_differs`` (one run takes more steps with no decision difference); ``unmatched``.
A comparison *matches* when every sequence is ``identical`` or ``near_tie``.
"""
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

if __package__ in (None, ''):  # run as a script: make the ``equivalence`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from equivalence.decisions import MASKED, UNMASKED, UnmaskRule, decision_components, decisions_differ  # noqa: E402
from equivalence.report import format_table  # noqa: E402
from equivalence.sequences import pair_by_prompt, sequences_from_recording  # noqa: E402
from equivalence.tolerances import (NEAR_TIE_FACTOR, coarser, is_near_tie, logits_tolerance,  # noqa: E402
                                    relative_spacing, ulp)

MATCHING_VERDICTS = ('identical', 'near_tie')


def _same_inputs(a, b) -> bool:
    return (a.kind == b.kind and a.block_start == b.block_start and torch.equal(a.input_ids, b.input_ids)
            and torch.equal(a.input_mask, b.input_mask))


def _max(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.max()) if x.numel() else 0.0


def step_deltas(a, b, exclude: list[int] | None = None) -> dict:
    """Differences between two runs' records of one step with identical inputs (rows processed in both,
    minus ``exclude``d block positions)."""
    rows = a.processed & b.processed
    if exclude:
        rows = rows.clone()
        rows[list(exclude)] = False
    masked = rows & (a.input_mask == MASKED)
    top1_a, top1_b = a.topk_values[rows, 0], b.topk_values[rows, 0]
    return dict(probe=_max((a.probe_logits[rows] - b.probe_logits[rows]).abs()),
                top1=_max((top1_a - top1_b).abs()),
                scale=max(_max(top1_a.abs()), _max(top1_b.abs())),
                log_conf=_max((a.confidence[masked].double().log() - b.confidence[masked].double().log()).abs()),
                processed_equal=bool(torch.equal(a.processed, b.processed)))


def scan_sequence(a: list, b: list) -> dict:
    """Walk the aligned steps up to the first difference; noise and logit deltas of the steps before."""
    before = dict(steps=0, probe=0.0, top1=0.0, scale=0.0, log_conf=0.0, processed_mismatch_steps=0,
                  trailing_steps_after_stop=0)
    for k, (sa, sb) in enumerate(zip(a, b)):
        if not _same_inputs(sa, sb):
            return dict(index=k, reason='inputs', before=before)
        deltas = step_deltas(sa, sb)
        if decisions_differ(sa, sb):
            return dict(index=k, reason='decision', before=before, at_step=deltas)
        before['steps'] += 1
        for key in ('probe', 'top1', 'scale', 'log_conf'):
            before[key] = max(before[key], deltas[key])
        before['processed_mismatch_steps'] += not deltas['processed_equal']
    if len(a) != len(b):
        shorter, longer = (a, b) if len(a) < len(b) else (b, a)
        if not _steps_after_stop(shorter, longer):
            return dict(index=len(shorter), reason='length', before=before)
        before['trailing_steps_after_stop'] = len(longer) - len(shorter)
    return dict(index=None, reason=None, before=before)


def _steps_after_stop(shorter: list, longer: list) -> bool:
    """The longer run only goes on past the shorter one's stop: the shorter one ended on a fully
    unmasked block (stops are decided there) and the longer one's next step commits that block.

    Upstream runs several decode loops per scheduler iteration (stock DLLM), so a sequence that
    stopped in an early loop is still stepped on the device until the host drops it; delayed cache
    and the reference run one step per iteration and stop at once.
    """
    if not shorter:
        return False
    last, extra = shorter[-1], longer[len(shorter)]
    return bool((last.next_mask == UNMASKED).all()) and bool((extra.input_mask == UNMASKED).all())


def _output_positions(step, positions: list[int], prompt_length: int) -> list[int]:
    return [step.block_start + p - prompt_length for p in positions]


def classify(scan: dict, a: list, b: list, prompt_length: int, rule: UnmaskRule, dtype: str, fallback: dict,
             probe_ids, factor: float) -> dict:
    """The per-sequence result: verdict, first difference and the logits check of the steps before."""
    before = scan['before']
    tolerance = logits_tolerance(dtype, before['scale'])
    logit_delta = max(before['probe'], before['top1'])
    logits_before = dict(steps=before['steps'], max_abs_delta_probe=before['probe'], max_abs_delta_top1=before['top1'],
                         max_abs_logit=before['scale'], tolerance=tolerance,
                         within_tolerance=logit_delta <= tolerance, max_abs_delta_log_confidence=before['log_conf'],
                         processed_mismatch_steps=before['processed_mismatch_steps'],
                         trailing_steps_after_stop=before['trailing_steps_after_stop'])
    result = dict(steps_a=len(a), steps_b=len(b), prompt_length=prompt_length, logits_before=logits_before,
                  first_difference=None)
    if scan['index'] is None:
        result['verdict'] = 'identical' if logits_before['within_tolerance'] else 'logits_out_of_tolerance'
        return result
    k = scan['index']
    if scan['reason'] != 'decision':
        step = a[k] if k < len(a) else b[k]
        result['first_difference'] = dict(step=k, kind=step.kind, type=scan['reason'], block_start=step.block_start)
        result['verdict'] = 'inputs_diverged' if scan['reason'] == 'inputs' else 'length_differs'
        return result

    sa, sb = a[k], b[k]
    # noise: this sequence's earlier steps; a sequence that differs at its first step borrows the batch's
    # plus the disagreement measured at the diverging step itself (same inputs, every masked row):
    # earlier steps may have run identical code in both arms (prefill), which measures no noise at all
    own = before['steps'] > 0
    deciding_rows = [p for c in decision_components(sa, sb, rule, probe_ids) for p in c.positions]
    at = step_deltas(sa, sb, exclude=deciding_rows)  # the flipped rows themselves do not count as noise
    noise_logit = max(logit_delta if own else fallback['logit'], at['probe'], at['top1'])
    noise_conf = max(before['log_conf'] if own else fallback['log_conf'], at['log_conf'])
    components = []
    for c in decision_components(sa, sb, rule, probe_ids):
        if c.kind == 'argmax':
            noise, floor = noise_logit, max(ulp(dtype, float(sa.topk_values[p, 0])) for p in c.positions)
        else:
            noise, floor = noise_conf, relative_spacing(dtype)
        entry = asdict(c)
        entry.update(noise=noise, floor=floor, near_tie=is_near_tie(c.gap, noise, floor, factor),
                     output_positions=_output_positions(sa, c.positions, prompt_length))
        components.append(entry)
    if not components:  # cannot happen when decisions_differ() holds; kept explicit for the JSON
        components.append(dict(kind='other', positions=[], gap=math.inf, gap_a=math.inf, gap_b=math.inf,
                               lower_bound=False, noise=noise_logit, floor=0.0, near_tie=False, output_positions=[]))
    near_tie = all(c['near_tie'] for c in components)
    deciding = max(components, key=lambda c: c['gap'] / max(factor * max(c['noise'], c['floor']), 1e-300))
    kinds = sorted({c['kind'] for c in components})
    result['first_difference'] = dict(
        step=k, kind=sa.kind, type='+'.join(kinds), block_start=sa.block_start,
        global_step_a=sa.step, global_step_b=sb.step,
        positions=sorted({p for c in components for p in c['positions']}),
        output_positions=sorted({p for c in components for p in c['output_positions']}),
        deciding_gap=deciding['gap'], noise=deciding['noise'], floor=deciding['floor'],
        noise_source='sequence' if own else 'batch', gap_is_lower_bound=any(c['lower_bound'] for c in components),
        near_tie=near_tie, at_step=scan['at_step'], components=components)
    if not near_tie:
        result['verdict'] = 'mismatch'
    else:
        result['verdict'] = 'near_tie' if logits_before['within_tolerance'] else 'logits_out_of_tolerance'
    return result


def compare_sequences(seqs_a: list, seqs_b: list, rule: UnmaskRule, probe_ids=None,
                      factor: float = NEAR_TIE_FACTOR) -> dict:
    """Per-sequence comparison of two runs (sequences paired by prompt) plus a summary."""
    pairs = pair_by_prompt(seqs_a, seqs_b)
    scans = {i: scan_sequence(seqs_a[i].steps, seqs_b[j].steps) for i, j in pairs if j is not None}
    fallback = dict(logit=max([max(s['before']['probe'], s['before']['top1']) for s in scans.values()] + [0.0]),
                    log_conf=max([s['before']['log_conf'] for s in scans.values()] + [0.0]))
    dtypes = {st.logits_dtype for seqs in (seqs_a, seqs_b) for s in seqs for st in s.steps[:1]}
    dtype = coarser(*dtypes) if dtypes else 'bfloat16'
    sequences = []
    for i, j in pairs:
        if j is None:
            sequences.append(dict(sequence=i, verdict='unmatched'))
            continue
        seq_a, seq_b = seqs_a[i], seqs_b[j]
        result = classify(scans[i], seq_a.steps, seq_b.steps, len(seq_a.prompt_ids), rule, dtype, fallback, probe_ids,
                          factor)
        sequences.append(dict(sequence=i, **result))
    return dict(summary=summarize(sequences, factor, dtype, fallback), sequences=sequences)


def summarize(sequences: list[dict], factor: float, dtype: str, fallback: dict) -> dict:
    counts = {}
    for s in sequences:
        counts[s['verdict']] = counts.get(s['verdict'], 0) + 1
    first = [s['first_difference'] for s in sequences if s.get('first_difference')]
    return dict(sequences=len(sequences), verdicts=counts,
                identical=counts.get('identical', 0),
                near_ties=counts.get('near_tie', 0),
                match=all(s['verdict'] in MATCHING_VERDICTS for s in sequences) and bool(sequences),
                first_difference_types=sorted({f['type'] for f in first}),
                near_tie_factor=factor, dtype=dtype, batch_noise=fallback,
                all_logits_before_within_tolerance=all(
                    s['logits_before']['within_tolerance'] for s in sequences if 'logits_before' in s))


def layout_difference(layout_a: list, layout_b: list, seqs_a: list, seqs_b: list) -> dict:
    """First global step whose row layout (kind, sequences per row) differs between two recordings."""
    to_b = dict(pair_by_prompt(seqs_a, seqs_b))
    for g, ((kind_a, rows_a), (kind_b, rows_b)) in enumerate(zip(layout_a, layout_b)):
        mapped = tuple(to_b.get(r, -2) if r >= 0 else -1 for r in rows_a)
        if kind_a != kind_b or mapped != rows_b:
            return dict(first_step=g, steps_a=len(layout_a), steps_b=len(layout_b))
    first = None if len(layout_a) == len(layout_b) else min(len(layout_a), len(layout_b))
    return dict(first_step=first, steps_a=len(layout_a), steps_b=len(layout_b))


def rule_from_meta(meta: dict) -> UnmaskRule:
    return UnmaskRule(strategy=meta.get('unmasking_strategy') or 'low_confidence_dynamic',
                      threshold=meta.get('confidence_threshold'))


def compare_recordings(dir_a, dir_b, factor: float = NEAR_TIE_FACTOR) -> dict:
    """Compare two ``LMDEPLOY_FOCUS_RECORD_STEPS`` directories (prompts matched across them)."""
    from lmdeploy_focus_dev.testing.step_recorder import load_meta, load_steps
    meta_a, meta_b = load_meta(dir_a), load_meta(dir_b)
    for key in ('probe_ids', 'block_length', 'unmasking_strategy', 'denoising_steps', 'confidence_threshold'):
        if meta_a.get(key) != meta_b.get(key):
            raise ValueError(f'recordings differ in {key}: {meta_a.get(key)!r} vs {meta_b.get(key)!r}')
    rec_a = sequences_from_recording(load_steps(dir_a), meta_a['mask_token_id'])
    rec_b = sequences_from_recording(load_steps(dir_b), meta_b['mask_token_id'])
    result = compare_sequences(rec_a.sequences, rec_b.sequences, rule_from_meta(meta_a),
                               torch.tensor(meta_a['probe_ids']), factor)
    result['summary'].update(layout=layout_difference(rec_a.layout, rec_b.layout, rec_a.sequences, rec_b.sequences),
                             orphan_rows=[rec_a.orphan_rows, rec_b.orphan_rows],
                             strategies=[meta_a.get('strategy_class'), meta_b.get('strategy_class')])
    return result


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def dump_json(result: dict, path) -> None:
    Path(path).write_text(json.dumps(_json_safe(result), indent=1))


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('recording_a')
    parser.add_argument('recording_b')
    parser.add_argument('--out', help='write the full result as JSON')
    parser.add_argument('--factor', type=float, default=NEAR_TIE_FACTOR, help='near-tie factor K')
    args = parser.parse_args(argv)
    result = compare_recordings(args.recording_a, args.recording_b, args.factor)
    print(format_table(result, f'{args.recording_a} vs {args.recording_b}'))
    if args.out:
        dump_json(result, args.out)


if __name__ == '__main__':
    main()
