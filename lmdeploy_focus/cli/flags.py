"""The FOCUS command-line flags, added to ``lmdeploy serve api_server`` and ``lmdeploy chat``, and chat's KV page
flag."""
import argparse
import json

from ..config.compat import check_no_speculative_decoding
from ..config.options import AUTO_ALPHA, OPTIONS, OPTIONS_KEY, FocusOptions
from ..log import log_once


def option_type(option):
    """argparse type of a valued option: parsed, then checked by ``FocusOptions`` itself (a clean usage
    error instead of a traceback)."""
    cast = type(option.default)
    if option.name == 'focus_alpha':  # a number, or the word 'auto'
        def cast(text):
            if text == AUTO_ALPHA:
                return text
            try:
                return float(text)
            except ValueError:  # float()'s own message never named the word the flag also takes ('Auto')
                raise ValueError(f'a number >= 1.0 or {AUTO_ALPHA!r}, got {text!r}') from None

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


def add_focus_arguments(parser: argparse.ArgumentParser, *, leave_unset: bool = False) -> None:
    """One flag per row of ``config.options.OPTIONS`` (names, defaults, choices and help from there).
    ``leave_unset``: a flag not given reads None (the engine config's default then stands; benchmark scripts)."""
    group = parser.add_argument_group('FOCUS (lmdeploy-focus)', 'Delayed cache and FOCUS token eviction for DLLMs')
    for option in OPTIONS:
        help_text = f'{option.help} (engine default: {option.default})' if leave_unset else option.help
        kwargs = dict(dest=option.field, default=None if leave_unset else option.default, help=help_text,
                      action=_Given)
        if option.is_switch:
            kwargs['switch'] = True
        elif option.choices is not None:
            kwargs['choices'] = option.choices
        else:
            kwargs['type'] = option_type(option)
        group.add_argument(option.flag, *option.aliases, **kwargs)


def options_from_args(args: argparse.Namespace) -> FocusOptions:
    """Validated options (ValueError on a bad value) from parsed arguments."""
    return FocusOptions.from_fields(vars(args)).resolved()


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
    overrides = getattr(args, 'hf_overrides', None) or {}
    if not isinstance(overrides, dict):  # upstream's parser takes any JSON value
        raise ValueError(f'--hf-overrides must be a JSON object of config keys, e.g. \'{{"rms_norm_eps": 1e-05}}\', '
                         f'got {json.dumps(overrides)}')
    overrides = dict(overrides)
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
    check_no_speculative_decoding(options, getattr(args, 'speculative_algorithm', None))
    if options.is_default:
        return
    overrides[OPTIONS_KEY] = options.to_dict()
    args.hf_overrides = overrides


# lmdeploy chat: upstream's chat parser lacks serve's --cache-block-seq-len, which a block length above the default KV
# page (64) needs under delayed cache / FOCUS (a page holds whole blocks). Its dest is the engine config's field, which
# upstream's build_pipe sets from every parsed option named like one.
PAGE_FLAG = '--cache-block-seq-len'
PAGE_FIELD = 'block_size'


def add_page_argument(parser: argparse.ArgumentParser) -> None:
    """``--cache-block-seq-len`` on ``lmdeploy chat``, checked as parsed and a bad value one line without the usage
    block (as the sampling flags): build_pipe sets the field after the config's own checks ran."""
    from ..config.compat import MIN_PAGE, is_power_of_two

    def checked(text: str) -> int:
        value = int(text) if text.strip().lstrip('-').isdigit() else None
        if value is None or value < MIN_PAGE or not is_power_of_two(value):
            parser.exit(2, f'{parser.prog}: error: argument {PAGE_FLAG}: must be a power of two >= {MIN_PAGE} '
                        f'(tokens in a KV page), got {text!r}\n')
        return value

    checked.__name__ = 'int'  # upstream's help formatter prints 'Type: <name>'
    parser.add_argument(PAGE_FLAG, dest=PAGE_FIELD, type=checked, default=None,
                        help='Tokens in a KV page of the PyTorch engine (upstream default 64); with delayed cache / '
                        'FOCUS a multiple of the block length, e.g. 128 for --dllm-block-length 128')


def page_for_chat(args: argparse.Namespace) -> None:
    """Left out: removed, so the engine config's default page stands (build_pipe would set None). Given: the kernel
    page follows it, as the config's own constructor makes it (build_pipe sets fields on a config already built with
    the default page, whose kernel page a smaller page would then not divide)."""
    if getattr(args, PAGE_FIELD, None) is None:
        vars(args).pop(PAGE_FIELD, None)
    else:
        args.kernel_block_size = getattr(args, PAGE_FIELD)
