"""Input checks shared by ``python -m lmdeploy_focus.calibrate`` and ``benchmark/eval_quality.py``: both decode a
task file with a DLLM, on the engine or the reference loop, and should refuse the same inputs with the same line,
before hours of decoding rather than after.

``*_problem`` functions return why an input is refused (None: it is fine); the others raise :class:`InputError`.
Each tool prefixes the message with its own name.
"""
import json
import os

from ..config.compat import is_power_of_two
from ..config.model_facts import DLLM_MODEL_TYPES, MAX_PATH_BLOCK_LENGTH, local_config, local_mask_token

# the flags only one backend reads: given to the other one, they would be recorded as applied and do nothing
REFERENCE_ONLY = ('--device', '--dtype')
ENGINE_ONLY = ('--eager-mode', '--cache-max-entry-count', '--session-len')
_WHY_NOT = {'engine': "the engine runs on CUDA in the checkpoint's dtype",
            'reference': 'the reference loop builds no engine'}


class InputError(ValueError):
    """An input a tool refuses before it runs (the message is one line)."""


def _dest(flag: str) -> str:
    return flag.lstrip('-').replace('-', '_')


def _joined(flags) -> str:
    return ' and '.join(flags) if len(flags) <= 2 else ', '.join(flags[:-1]) + f' and {flags[-1]}'


def flags_given(args, flags) -> list[str]:
    """Those of ``flags`` the command line set: each one's unset value is None, off or ``auto``."""
    return [f for f in flags if getattr(args, _dest(f), None) not in (None, False, 'auto')]


def other_backend_problem(backend: str, args) -> str | None:
    """Flags of the other backend set for ``backend`` (the resolved one). The message names the rule with every
    such flag this tool has, and the ones given."""
    owner, flags = ('reference', REFERENCE_ONLY) if backend == 'engine' else ('engine', ENGINE_ONLY)
    given = flags_given(args, flags)
    if not given:
        return None
    group = [f for f in flags if hasattr(args, _dest(f))]
    verb = 'applies' if len(group) == 1 else 'apply'
    leave = 'it' if len(group) == 1 else 'them' if given == group else _joined(given)
    return (f'{_joined(group)} {verb} to the {owner} backend only ({_WHY_NOT[backend]}); add --backend {owner}, or '
            f'leave {leave} out')


def block_length_problem(value: int | None, flag: str = '--block-length') -> str | None:
    """The engine serves power-of-two blocks only (a KV page holds whole blocks): a result measured at another
    length could not be served."""
    if value is None or (is_power_of_two(value) and value <= MAX_PATH_BLOCK_LENGTH):
        return None
    return (f'{flag} must be a power of two up to {MAX_PATH_BLOCK_LENGTH} (the one the model was trained with), got '
            f'{value}')


def stop_token_ids(model: str, tokenizer) -> tuple[int, ...]:
    """The ids decoding stops on: the tokenizer's EOS and ``generation_config.json``'s ``eos_token_id`` (an int
    or a list of ints; anything else is refused naming the file, not a TypeError when the ids are sorted)."""
    ids = set()
    if getattr(tokenizer, 'eos_token_id', None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    path = os.path.join(model, 'generation_config.json')
    if os.path.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                eos = json.load(f).get('eos_token_id')
        except (OSError, ValueError, AttributeError) as e:
            raise InputError(f'cannot read the stop ids of {path}: {e}') from None
        eos = [eos] if isinstance(eos, int) else eos or []
        if not isinstance(eos, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in eos):
            raise InputError(f'{path}: eos_token_id must be an integer or a list of integers, got {eos!r}')
        ids.update(eos)
    return tuple(sorted(ids))


def check_prompts(model: str, task_file: str, tasks, prompt_ids, budgets) -> None:
    """Each task must fit the model (``model`` a local checkpoint folder): no mask token in a diffusion model's
    prompt (the decoder would take it for a position to fill), prompt + answer budget within the model's
    positions (a budget of a billion tokens asked for a KV cache of half a terabyte). Names ``FILE:LINE``."""
    config = local_config(model)
    if config is None:
        raise InputError(f'cannot read {model}/config.json as a JSON object')
    mask = local_mask_token(config) if config.get('model_type') in DLLM_MODEL_TYPES else None
    positions = config.get('max_position_embeddings')
    for task, ids, budget in zip(tasks, prompt_ids, budgets):
        if mask is not None and mask in ids:
            raise InputError(f"{task_file}:{task.line}: the prompt holds the model's mask token (id {mask}), which a "
                             'diffusion model decodes as a position to fill; remove it')
        if isinstance(positions, int) and len(ids) + budget > positions:
            raise InputError(f'{task_file}:{task.line}: the prompt ({len(ids)} tokens) and its max_new_tokens '
                             f"({budget}) exceed the model's {positions} positions; shorten it or lower "
                             'max_new_tokens (or --max-new-tokens)')
