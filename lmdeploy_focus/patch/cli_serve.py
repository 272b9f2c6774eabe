"""Patch 5a: FOCUS flags on ``lmdeploy serve api_server`` (see package docstring).

Flags the FOCUS options or the engine config refuse (an option both a flag and in ``--hf-overrides``, ``--focus --tp
2``, a block length no page holds) end in one line, ``lmdeploy serve api_server: error: ...``, exit status 2
(:mod:`lmdeploy_focus.cli.config_errors`; they were tracebacks)."""
import functools

COMMAND = 'lmdeploy serve api_server'


def apply(serve_module) -> None:
    from ..cli import preflight
    from ..cli.config_errors import config_errors, flag_errors
    from ..cli.flags import add_focus_arguments, fold_into_hf_overrides, track_for_metrics

    cls = serve_module.SubCliServe
    upstream_add_parser = cls.add_parser_api_server
    upstream_runner = cls.api_server

    @functools.wraps(upstream_add_parser)
    def add_parser_api_server():
        upstream_add_parser()
        parser = cls.subparsers.choices['api_server']
        add_focus_arguments(parser)
        preflight.check_model_path_argument(parser)
        preflight.require_cuda_before_download(parser, COMMAND)

    @functools.wraps(upstream_runner)
    def api_server(args):
        with flag_errors(COMMAND):
            track_for_metrics(args)
            fold_into_hf_overrides(args)
        preflight.require_cuda(args, COMMAND)
        with config_errors(COMMAND):  # upstream builds the engine config from the flags, then serves
            return upstream_runner(args)

    cls.add_parser_api_server = staticmethod(add_parser_api_server)
    cls.api_server = staticmethod(api_server)
