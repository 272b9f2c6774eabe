"""A short text table of a comparison: one line per sequence, then the summary."""


def _fmt(x, digits=3):
    if x is None:
        return '-'
    if isinstance(x, float):
        return f'{x:.{digits}g}'
    return str(x)


def format_table(result: dict, title: str) -> str:
    lines = [title,
             f'{"seq":>4} {"verdict":<24} {"1st diff step":>13} {"kind":<8} {"type":<17} {"out pos":<12} '
             f'{"gap":>9} {"noise":>9} {"floor":>9} {"near-tie":<8} {"max|dlogit| before":>18} {"tol":>8}']
    for s in result['sequences']:
        d = s.get('first_difference') or {}
        before = s.get('logits_before') or {}
        delta = max(before.get('max_abs_delta_probe', 0.0), before.get('max_abs_delta_top1', 0.0)) if before else None
        positions = ','.join(str(p) for p in d.get('output_positions', [])[:3])
        lines.append(f'{s["sequence"]:>4} {s["verdict"]:<24} {_fmt(d.get("step")):>13} {_fmt(d.get("kind")):<8} '
                     f'{_fmt(d.get("type")):<17} {positions or "-":<12} {_fmt(d.get("deciding_gap")):>9} '
                     f'{_fmt(d.get("noise")):>9} {_fmt(d.get("floor")):>9} {_fmt(d.get("near_tie")):<8} '
                     f'{_fmt(delta):>18} {_fmt(before.get("tolerance")):>8}')
    summary = result['summary']
    lines.append(f'summary: {summary["verdicts"]}; match={summary["match"]}; '
                 f'logits before within tolerance: {summary["all_logits_before_within_tolerance"]}; '
                 f'dtype {summary["dtype"]}, near-tie factor {summary["near_tie_factor"]}')
    if 'layout' in summary:
        lines.append(f'row layout: first differing global step {summary["layout"]["first_step"]} '
                     f'(steps {summary["layout"]["steps_a"]} vs {summary["layout"]["steps_b"]})')
    return '\n'.join(lines)
