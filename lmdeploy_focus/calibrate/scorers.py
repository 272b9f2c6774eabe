"""Scorers: ``score(output_text, target_text) -> 0.0 or 1.0``; accuracy is their mean.

exact          output == target, byte for byte
exact_strip    same after stripping surrounding whitespace (default for ``answer`` tasks)
numeric        the output's final number equals the target's (see :func:`final_number`)
prefix_chars:N the output, left-stripped, starts with the first N characters of the left-stripped
               target (all of it when shorter); default for ``reference`` tasks with N = 64: a
               fixed-length opening of a known continuation, indifferent to how long the model
               goes on. Characters, not tokens, so both backends and any tokenizer score alike.
contains       the stripped target occurs in the output
"""
import math
import re
from collections.abc import Callable

DEFAULT_ANSWER_SCORER = 'exact_strip'
DEFAULT_REFERENCE_SCORER = 'prefix_chars:64'
NAMES = ('exact', 'exact_strip', 'numeric', 'prefix_chars:N', 'contains')

# integers with optional thousands separators, decimals, simple fractions a/b
_NUMBER = re.compile(r'-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+')
_BOXED = re.compile(r'\\boxed\{([^{}]*)\}')
_REL_TOL = 1e-6


class ScorerError(ValueError):
    """An unknown or malformed scorer name."""


def _number_value(text: str) -> float:
    text = text.replace(',', '')
    if '/' in text:
        num, den = text.split('/')
        return float(num) / float(den) if float(den) else float('nan')
    return float(text)


def final_number(text: str) -> float | None:
    """The answer number of a text: the last ``\\boxed{}``'s, else the one after the last ``####``
    (GSM8K), else the last number anywhere; None when there is none."""
    boxed = _BOXED.findall(text)
    for part in ([boxed[-1]] if boxed else []) + ([text.rsplit('####', 1)[1]] if '####' in text else []) + [text]:
        numbers = _NUMBER.findall(part)
        if numbers:
            return _number_value(numbers[-1])
    return None


def _exact(output: str, target: str) -> float:
    return float(output == target)


def _exact_strip(output: str, target: str) -> float:
    return float(output.strip() == target.strip())


def _contains(output: str, target: str) -> float:
    return float(target.strip() in output)


def _numeric(output: str, target: str) -> float:
    got, want = final_number(output), final_number(target)
    if got is None or want is None:
        return 0.0
    return float(abs(got - want) <= _REL_TOL * max(1.0, abs(want)))


def _prefix_chars(n: int) -> Callable[[str, str], float]:

    def score(output: str, target: str) -> float:
        return float(output.lstrip().startswith(target.lstrip()[:n]))

    return score


_SIMPLE = {'exact': _exact, 'exact_strip': _exact_strip, 'contains': _contains, 'numeric': _numeric}


def get_scorer(spec: str) -> Callable[[str, str], float]:
    """The scorer of a name from :data:`NAMES` (``prefix_chars:N`` with an integer N >= 1)."""
    if not isinstance(spec, str):
        raise ScorerError(f'scorer must be a string, got {spec!r}')
    if spec in _SIMPLE:
        return _SIMPLE[spec]
    name, _, arg = spec.partition(':')
    if name == 'prefix_chars':
        if not (arg.isascii() and arg.isdigit()) or int(arg) < 1:  # isdigit alone takes '²', which int() refuses
            raise ScorerError(f'scorer {spec!r}: prefix_chars needs a character count >= 1, e.g. prefix_chars:64')
        return _prefix_chars(int(arg))
    raise ScorerError(f'unknown scorer {spec!r}; known: {", ".join(NAMES)}')


def check_target(spec: str, target: str) -> None:
    """Reject targets a scorer can never match (found at load time, not after a long run)."""
    if spec != 'exact' and not target.strip():
        raise ScorerError(f'scorer {spec!r} needs a non-blank target')
    value = final_number(target) if spec == 'numeric' else None
    if spec == 'numeric' and (value is None or not math.isfinite(value)):  # '1/0' reads as NaN: never equal
        raise ScorerError(f'scorer "numeric": the target {target[:40]!r} holds no number')
