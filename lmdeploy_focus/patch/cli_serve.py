"""Patch 5a: FOCUS flags on ``lmdeploy serve api_server`` (see package docstring)."""
import functools


def apply(serve_module) -> None:
    from ..cli import preflight
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

    @functools.wraps(upstream_runner)
    def api_server(args):
        track_for_metrics(args)
        fold_into_hf_overrides(args)
        preflight.require_cuda(args, 'lmdeploy serve api_server')
        return upstream_runner(args)

    cls.add_parser_api_server = staticmethod(add_parser_api_server)
    cls.api_server = staticmethod(api_server)
