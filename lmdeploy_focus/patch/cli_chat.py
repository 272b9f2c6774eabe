"""Patch 5b: FOCUS flags on ``lmdeploy chat`` (see package docstring)."""
import functools


def apply(cli_module) -> None:
    from ..cli.flags import add_focus_arguments

    cls = cli_module.CLI
    upstream_add_parser = cls.add_parser_chat

    @functools.wraps(upstream_add_parser)
    def add_parser_chat():
        upstream_add_parser()
        add_focus_arguments(cls.subparsers.choices['chat'])

    cls.add_parser_chat = staticmethod(add_parser_chat)
