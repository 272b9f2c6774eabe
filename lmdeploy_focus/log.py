"""The plugin's logger: a child of LMDeploy's ``lmdeploy`` logger, so ``--log-level`` applies."""
import logging

logger = logging.getLogger('lmdeploy.focus')

_logged_once: set = set()


def log_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` at ``level`` the first time in this process, at DEBUG after that (for notes
    that every construction of a config would otherwise repeat)."""
    first = message not in _logged_once
    _logged_once.add(message)
    logger.log(level if first else logging.DEBUG, message)
