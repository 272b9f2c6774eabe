"""An answer budget the user never chose is cut to the room the session leaves, instead of refused.

The request boundary (:mod:`.boundary`) refuses a ``max_new_tokens`` that does not fit the session next to the
prompt: for an explicit budget (a ``max_tokens`` of the api_server, a ``GenerationConfig`` of ``pipeline()``,
``--max-new-tokens``) that is a 400 / error naming the fix. Chat's budget is upstream's fixed default (4096),
which the user never chose; the whole transcript is re-sent each turn, so with a ``--session-len`` below about
4096 + the transcript every turn was refused. Upstream's engine cuts such an answer to the room left with a
warning; in the chat process, and only for that default, the answer budget is cut to the room left (one
token at least: a prompt that fills the session alone is still refused). The same holds for ``pipeline()`` given
no ``GenerationConfig``: upstream passes ``GenerationConfig()`` (512 new tokens), which its engine cut to the room
left with a warning; a config whose every field is at its default is cut the same way, any process.
"""
from copy import deepcopy

from ..log import logger

_clip_answers = False


def clip_answers_to_session(on: bool = True) -> None:
    """Set by ``lmdeploy chat`` when the user gave no ``--max-new-tokens`` (process-wide: one chat a process)."""
    global _clip_answers
    _clip_answers = on


def fit_answer(gen_config, prompt_len: int, session_len: int | None):
    """``gen_config`` with ``max_new_tokens`` cut to the session's room if it does not fit and its budget is not the
    user's (chat without ``--max-new-tokens``, or a config at its defaults: ``pipeline()`` given none); a copy (the
    session's config is reused every turn); else ``gen_config`` itself."""
    if gen_config is None or session_len is None:
        return gen_config
    budget, room = gen_config.max_new_tokens, session_len - prompt_len
    if budget is None or room < 1 or budget <= room:
        return gen_config
    if _clip_answers:
        logger.info(f'lmdeploy chat: this answer may have at most {room} tokens ({prompt_len} of the session length '
                    f'{session_len} are the conversation so far); --session-len raises it, "end" starts a new one')
    elif gen_config == type(gen_config)():
        logger.warning(f'a GenerationConfig at its defaults (what pipeline() passes when given none): its '
                       f'max_new_tokens {budget} does not fit next to the {prompt_len}-token prompt in the session '
                       f'length {session_len}; this answer may have at most {room} tokens (set '
                       f'GenerationConfig(max_new_tokens=...) to choose)')
    else:
        return gen_config
    fitted = deepcopy(gen_config)
    fitted.max_new_tokens = room
    return fitted
