"""``lmdeploy chat`` without ``--max-new-tokens``: an answer the session cannot hold whole is cut to the room left.

The request boundary (:mod:`.boundary`) refuses a ``max_new_tokens`` that does not fit the session next to the
prompt: for an explicit budget (a ``max_tokens`` of the api_server, a ``GenerationConfig`` of ``pipeline()``,
``--max-new-tokens``) that is a 400 / error naming the fix. Chat's budget is upstream's fixed default (4096),
which the user never chose; the whole transcript is re-sent each turn, so with a ``--session-len`` below about
4096 + the transcript every turn was refused. Upstream's AR engine cuts such an answer to the room left
silently; in the chat process, and only for that default, the answer budget is cut to the room left (one
token at least: a prompt that fills the session alone is still refused).
"""
from copy import deepcopy

from ..log import logger

_clip_answers = False


def clip_answers_to_session(on: bool = True) -> None:
    """Set by ``lmdeploy chat`` when the user gave no ``--max-new-tokens`` (process-wide: one chat a process)."""
    global _clip_answers
    _clip_answers = on


def fit_answer(gen_config, prompt_len: int, session_len: int | None):
    """``gen_config`` with ``max_new_tokens`` cut to the session's room if clipping is on and it does not fit
    (a copy; the session's config is reused every turn), else ``gen_config`` itself."""
    if not _clip_answers or gen_config is None or session_len is None:
        return gen_config
    budget, room = gen_config.max_new_tokens, session_len - prompt_len
    if budget is None or room < 1 or budget <= room:
        return gen_config
    logger.info(f'lmdeploy chat: this answer may have at most {room} tokens ({prompt_len} of the session length '
                f'{session_len} are the conversation so far); --session-len raises it, "end" starts a new one')
    fitted = deepcopy(gen_config)
    fitted.max_new_tokens = room
    return fitted
