"""Sampling flags of ``lmdeploy chat`` (issue 15: ``lmdeploy chat MODEL --top-p 7`` must end in one line
naming the flag and its range, never in an assertion or a dead engine).

Upstream 0.18's ``chat`` has no sampling flags, yet its ``build_gen_config`` copies every parsed option
named like a ``GenerationConfig`` field into the session's config. So the flags below, named after those
fields, reach the engine with no further plumbing. Each is checked as it is parsed, by the request rules
of :mod:`lmdeploy_focus.serving.validation` (the one place the ranges are written), and reported as
``lmdeploy chat: error: argument --top-p: must be a number in (0, 1], got 7.0`` (exit status 2, without
the long usage block). A flag left out is removed before upstream runs, so upstream's defaults stand.
"""
import argparse

from ..serving.validation import FieldError, check_max_tokens, check_sampling

# GenerationConfig field -> (flag, parse, help). Values are parsed leniently (int or float as written)
# so that the range rule, not argparse's 'invalid float value', reports a bad one.
SAMPLING_FLAGS = {
    'temperature': ('--temperature', float, 'sampling temperature (0: greedy); upstream default 0.8'),
    'top_p': ('--top-p', float, 'nucleus sampling mass; upstream default 1.0'),
    'top_k': ('--top-k', int, 'sample among the k most likely tokens (0: no top-k); upstream default 50'),
    'repetition_penalty': ('--repetition-penalty', float, 'penalty for repeated tokens (1.0: none)'),
    'max_new_tokens': ('--max-new-tokens', int, 'the most tokens one answer may have; chat default 4096'),
}


def check_flag(dest: str, value) -> None:
    """Raise :class:`FieldError` (``param`` = the flag) when ``value`` is outside the field's range."""
    flag = SAMPLING_FLAGS[dest][0]
    if dest == 'max_new_tokens':
        check_max_tokens(flag, value)
    else:
        check_sampling(**{dest: value}, names={dest: flag})


def _parse(text: str, parse):
    try:
        return parse(text)
    except ValueError:
        return text  # not a number: the range rule reports it with the value as given


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Sampling (lmdeploy-focus)', 'Checked as parsed; left out: upstream\'s default')
    for dest, (flag, parse, help_text) in SAMPLING_FLAGS.items():

        def checked(text: str, dest=dest, parse=parse):
            value = _parse(text, parse)
            try:
                check_flag(dest, value)
            except FieldError as error:
                parser.exit(2, f'{parser.prog}: error: argument {error.message}\n')
            return value

        checked.__name__ = parse.__name__  # upstream's help formatter prints 'Type: <name>'
        group.add_argument(flag, dest=dest, type=checked, default=None, help=help_text)


def drop_unset_sampling(args: argparse.Namespace) -> None:
    """Upstream's ``build_gen_config`` copies every matching attribute, ``None`` included: remove the
    flags that were not given so its defaults stand."""
    for dest in SAMPLING_FLAGS:
        if getattr(args, dest, None) is None and hasattr(args, dest):
            delattr(args, dest)
