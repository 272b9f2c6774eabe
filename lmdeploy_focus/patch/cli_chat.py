"""Patch 5b: FOCUS and sampling flags on ``lmdeploy chat``, and a failed turn that says why (see package docstring).

Also ``--cache-block-seq-len`` (serve's flag, which upstream's chat lacks; a block length above the default page of 64
needs it under delayed cache / FOCUS), and the FOCUS checks of the engine config run before the engine starts, a
refused setting one line, ``lmdeploy chat: error: ...``, exit status 2 (:mod:`lmdeploy_focus.cli.config_errors`;
``build_pipe`` sets the flags on a config built with defaults, so the checks ran first deep in the engine start)."""
import functools

COMMAND = 'lmdeploy chat'


def apply(cli_module) -> None:
    from ..cli import preflight
    from ..cli.chat_errors import report_errors
    from ..cli.config_errors import check_config_first
    from ..cli.flags import GIVEN_ATTR, add_focus_arguments, add_page_argument, page_for_chat
    from ..cli.sampling import add_sampling_arguments, drop_unset_sampling
    from ..serving.answer_budget import clip_answers_to_session

    cls = cli_module.CLI
    upstream_add_parser = cls.add_parser_chat
    upstream_runner = cls.chat

    @functools.wraps(upstream_add_parser)
    def add_parser_chat():
        upstream_add_parser()  # its set_defaults(run=CLI.chat) reads the wrapped runner below
        parser = cls.subparsers.choices['chat']
        add_focus_arguments(parser)
        add_page_argument(parser)
        add_sampling_arguments(parser)
        preflight.check_model_path_argument(parser)
        preflight.require_cuda_before_download(parser, COMMAND)

    @functools.wraps(upstream_runner)
    def chat(args):
        preflight.require_cuda(args, COMMAND)
        # upstream's fixed 4096 budget is cut to the session's room; a --max-new-tokens given must fit
        clip_answers_to_session(getattr(args, 'max_new_tokens', None) is None)
        drop_unset_sampling(args)
        page_for_chat(args)
        vars(args).pop(GIVEN_ATTR, None)  # serve's conflict check reads it; chat would pass it on as an engine kwarg
        report_failed_turns()
        check_engine_config_first()
        return upstream_runner(args)

    def report_failed_turns():
        # the chat process runs one chat: its pipeline reports a failed turn (process-wide, as the answer clipping)
        from lmdeploy.pipeline import Pipeline
        if getattr(Pipeline.stream_infer, '__lmdeploy_focus_upstream__', None) is None:
            Pipeline.stream_infer = report_errors(Pipeline.stream_infer)

    def check_engine_config_first():
        # build_pipe calls the chat module's `pipeline` with the finished engine config (a module attribute it reads
        # at call time); the chat process builds one pipeline
        import lmdeploy.cli.chat as chat_main
        if getattr(chat_main.pipeline, '__lmdeploy_focus_upstream__', None) is None:
            chat_main.pipeline = check_config_first(chat_main.pipeline, COMMAND)

    cls.add_parser_chat = staticmethod(add_parser_chat)
    cls.chat = staticmethod(chat)
