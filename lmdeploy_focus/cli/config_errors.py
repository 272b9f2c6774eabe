"""One line (``COMMAND: error: MESSAGE``, exit status 2, as argparse and :mod:`.preflight`'s model-path check report
a bad flag) instead of a traceback when the FOCUS options or the engine config refuse the flags of ``lmdeploy serve
api_server`` or ``lmdeploy chat``: an option given both as a flag and in ``--hf-overrides``, ``--focus --tp 2``, a
block length no KV page holds, importance eviction under sequential unmasking.
"""
import contextlib
import functools
import sys
from typing import NoReturn


def usage_error(command: str, error) -> NoReturn:
    """Print ``COMMAND: error: ERROR`` on stderr and exit with status 2."""
    print(f'{command}: error: {error}', file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextlib.contextmanager
def flag_errors(command: str):
    """Around the plugin's own reading of the flags (every ValueError there is about the flags)."""
    try:
        yield
    except ValueError as error:
        usage_error(command, error)


def _raised_by_config_checks(error: BaseException) -> bool:
    """Whether ``error`` came out of the FOCUS ``PytorchEngineConfig``'s checks (its ``__post_init__`` is on the
    traceback): upstream's runner builds the config from the flags, then serves; only the former is the flags' fault."""
    from ..config.engine_config import PytorchEngineConfig
    checks = PytorchEngineConfig.__post_init__.__code__
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is checks:
            return True
        frame = frame.tb_next
    return False


@contextlib.contextmanager
def config_errors(command: str):
    """Around upstream's ``api_server`` runner, which builds the engine config from the flags (no hook between the
    build and the serving): a ValueError of that build is one line, any other error stays upstream's."""
    try:
        yield
    except ValueError as error:
        if not _raised_by_config_checks(error):
            raise
        usage_error(command, error)


def check_config_first(pipeline, command: str):
    """Wrap ``lmdeploy.cli.chat.pipeline``: upstream's chat ``build_pipe`` sets the flags on an engine config built
    with defaults, so its checks first run deep in the engine start; run the FOCUS ones before it."""

    @functools.wraps(pipeline)
    def checked(*args, **kwargs):
        from ..config.compat import check_no_speculative_decoding
        config = kwargs.get('backend_config')
        if hasattr(config, 'focus_options'):  # TurboMind's config has none
            with flag_errors(command):
                config.check_fields()
                check_no_speculative_decoding(config.focus_options(), getattr(kwargs.get('speculative_config'),
                                                                              'method', None))
        return pipeline(*args, **kwargs)

    checked.__lmdeploy_focus_upstream__ = pipeline
    return checked
