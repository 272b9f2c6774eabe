"""The FOCUS command-line flags, added to ``lmdeploy serve api_server`` and ``lmdeploy chat``."""
import argparse

from ..config.options import AUTO_ALPHA, OPTIONS, OPTIONS_KEY, FocusOptions
from ..log import log_once


def _validated(option):
    """argparse type of a valued option: parsed, then checked by ``FocusOptions`` itself (a clean usage
    error instead of a traceback)."""
    cast = type(option.default)
    if option.name == 'focus_alpha':  # a number, or the word 'auto'
        def cast(text):
            return text if text == AUTO_ALPHA else float(text)

    def parse(text: str):
        try:
            return getattr(FocusOptions(**{option.name: cast(text)}), option.name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = option.field
    return parse


# the dests of the FOCUS flags given on the command line (a set on the parsed namespace): a flag given with its
# default value must still conflict with a different value in --hf-overrides, which the value alone cannot tell
GIVEN_ATTR = '_dllm_flags_given'


class _Given(argparse.Action):
    """``store`` (``store_true`` with ``switch=True``), recording in :data:`GIVEN_ATTR` that the flag was given."""

    def __init__(self, option_strings, dest, switch: bool = False, **kwargs):
        if switch:
            kwargs.update(nargs=0, const=True)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        setattr(namespace, GIVEN_ATTR, set(getattr(namespace, GIVEN_ATTR, None) or ()) | {self.dest})


def add_focus_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per row of ``config.options.OPTIONS`` (names, defaults, choices and help from there)."""
    group = parser.add_argument_group('FOCUS (lmdeploy-focus)', 'Delayed cache and FOCUS token eviction for DLLMs')
    for option in OPTIONS:
        kwargs = dict(dest=option.field, default=option.default, help=option.help, action=_Given)
        if option.is_switch:
            kwargs['switch'] = True
        elif option.choices is not None:
            kwargs['choices'] = option.choices
        else:
            kwargs['type'] = _validated(option)
        group.add_argument(option.flag, *option.aliases, **kwargs)


def options_from_args(args: argparse.Namespace) -> FocusOptions:
    """Validated options (ValueError on a bad value) from parsed arguments."""
    return FocusOptions(**{option.name: getattr(args, option.field) for option in OPTIONS}).resolved()


def track_for_metrics(args: argparse.Namespace) -> bool:
    """api_server: with delayed cache or FOCUS on and the metrics system on (upstream's default; off with
    ``--disable-metrics``), ``--dllm-track`` is implied, so that ``/metrics`` carries the
    ``lmdeploy:dllm_*`` series (:mod:`lmdeploy_focus.serving.metrics`). Returns whether it turned it on."""
    if args.dllm_track or getattr(args, 'disable_metrics', True):
        return False
    # the options given as --hf-overrides '{"dllm_focus": {...}}' (the flags left at their defaults)
    overrides = getattr(args, 'hf_overrides', None) or {}
    carried = overrides.get(OPTIONS_KEY) if isinstance(overrides, dict) else None
    if isinstance(carried, dict) and 'track' in carried:
        return False  # the user's own choice: an implied --dllm-track would conflict with it
    if options_from_args(args).uses_sparse_decode:
        args.dllm_track = True
    else:
        if carried is None:
            return False
        options = FocusOptions.from_dict(carried).resolved()
        if options.track or not options.uses_sparse_decode:
            return False
        args.hf_overrides = {**overrides, OPTIONS_KEY: {**carried, 'track': True}}
    log_once('Delayed cache / FOCUS with metrics on: --dllm-track enabled for the lmdeploy:dllm_* series on '
             '/metrics (--disable-metrics serves without both).')
    return True


def fold_into_hf_overrides(args: argparse.Namespace) -> None:
    """Put non-default FOCUS options into ``args.hf_overrides`` (the channel to the engine), merged with any
    given there as ``--hf-overrides '{"dllm_focus": {...}}'``: a flag and that dict may each set options, and a
    flag set to another value than the dict's for the same option is refused (ValueError naming both)."""
    options_from_args(args)  # the flags' own values, validated (ValueError naming the bad one)
    overrides = dict(getattr(args, 'hf_overrides', None) or {})
    carried = overrides.get(OPTIONS_KEY)
    merged = dict(FocusOptions.from_dict(carried).to_dict() if carried is not None else {})
    carried = carried or {}
    given = getattr(args, GIVEN_ATTR, None) or set()
    for option in OPTIONS:
        value = getattr(args, option.field)
        if value == option.default and option.field not in given:
            continue
        if option.name in carried and carried[option.name] != value:
            raise ValueError(f'{option.flag} {value!r} conflicts with --hf-overrides {OPTIONS_KEY}.{option.name}='
                             f'{carried[option.name]!r}: give the option once')
        merged[option.name] = value
    options = FocusOptions(**merged).resolved() if merged else FocusOptions()
    if options.is_default:
        return
    overrides[OPTIONS_KEY] = options.to_dict()
    args.hf_overrides = overrides

