"""The engine process's sampled host time by function, per arm, from a paired serving run.

    python3 benchmark/host_time_table.py SERVING_PAIRED.json [--function TEXT ...] [--all N]

``benchmark/serving_wall_time.py --host-profile`` samples every Python process of each arm's server and keeps,
per timed load, each function's inclusive share of the samples (``top_inclusive``, the profile's top functions
only). This sums ``share × wall`` over the loads for the engine process (the one running the model agent's
step) and prints one markdown row per function: seconds per arm. ``--function`` picks functions by a
substring of ``'path func'`` (default: the decode step's main stages; every match is its own row, since nested
functions' inclusive times overlap); ``--all N`` lists instead the N functions with the most time in the first
profiled arm. A function below a load's cut-off counts 0 for that load, so a cell can read low, never high; one
that no load listed reads ``·``.
"""
import argparse
import json
import sys

ENGINE_MARK = 'model_agent/agent.py _async_step'
BELOW_CUT, MISSING = '·', '—'  # not among any load's top functions; no engine profile for the arm
# the decode step's stages, upstream's and the plugin's (substrings of 'path func')
DEFAULT_FUNCTIONS = ('agent.py _async_step', 'agent.py _async_model_forward', 'agent.py async_sampling_logits',
                     'inputs_maker.py _make_forward_inputs', 'delayed_cache_runtime.py run_step',
                     'delayed_cache_runtime.py after_unmasking', 'delayed_cache_runtime.py _auto_update',
                     'step_inputs.py step_decode', 'step_inputs.py reindex', 'step_inputs.py merge_prefill')


def engine_profile(profiles: list[dict]) -> dict | None:
    """The engine process's profile: the one whose loads sampled the model agent's step."""
    for profile in profiles:
        if any(name == ENGINE_MARK or name.endswith(ENGINE_MARK)
               for window in profile.get('windows', []) for name, _ in window.get('top_inclusive', [])):
            return profile
    return None


def inclusive_seconds(profile: dict) -> dict[str, float]:
    """Per function: the sum over the loads of its inclusive share times the load's wall time."""
    total: dict[str, float] = {}
    for window in profile.get('windows', []):
        for name, share in window.get('top_inclusive', []):
            total[name] = total.get(name, 0.0) + share * window['wall_s']
    return total


def table(result: dict, functions=DEFAULT_FUNCTIONS, top: int | None = None) -> tuple[list[str], list[tuple]]:
    """(arms, rows): one row per profiled function (``'path func'``) that contains one of ``functions`` (each its own
    row: inclusive times of nested functions must not be added), or the first profiled arm's ``top`` costliest;
    cells are seconds per arm, ``BELOW_CUT`` where no load of the arm listed the function, ``MISSING`` where the arm
    has no engine profile. Rows by the first profiled arm's time."""
    arms = list(result['arms'])
    seconds = []
    for arm in arms:
        profile = engine_profile(result['arms'][arm].get('host_profile') or [])
        seconds.append(None if profile is None else inclusive_seconds(profile))
    profiled = [s for s in seconds if s is not None]
    names = set().union(*profiled) if profiled else set()
    if top is None:
        names = {name for name in names if any(pattern in name for pattern in functions)}
    first = profiled[0] if profiled else {}
    ordered = sorted(names, key=lambda name: (-first.get(name, 0.0), name))
    if top is not None:
        ordered = ordered[:top]
    return arms, [(name, [MISSING if s is None else s.get(name, BELOW_CUT) for s in seconds]) for name in ordered]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('result')
    p.add_argument('--function', action='append', default=None, help="substring of 'path func' (repeatable)")
    p.add_argument('--all', type=int, default=None, metavar='N', help="the first arm's N costliest functions instead")
    args = p.parse_args(argv)
    with open(args.result) as f:
        result = json.load(f)
    arms, rows = table(result, tuple(args.function) if args.function else DEFAULT_FUNCTIONS, args.all)
    print('| engine host s, summed over the loads | ' + ' | '.join(arms) + ' |')
    print('| --- ' * (len(arms) + 1) + '|')
    for name, cells in rows:
        print(f'| {name} | ' + ' | '.join(c if isinstance(c, str) else f'{c:.2f}' for c in cells) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
