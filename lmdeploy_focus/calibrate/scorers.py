"""Scorers: ``score(output_text, target_text) -> 0.0 or 1.0``; accuracy is their mean.

exact          output == target, byte for byte
exact_strip    same after stripping surrounding whitespace (default for ``answer`` tasks)
numeric        the output's final number equals the target's (see :func:`final_value`): integers exactly,
               other numbers within a relative 1e-9
prefix_chars:N the output, left-stripped, starts with the first N characters of the left-stripped
               target (all of it when shorter); default for ``reference`` tasks with N = 64: a
               fixed-length opening of a known continuation, indifferent to how long the model
               goes on. Characters, not tokens, so both backends and any tokenizer score alike.
contains       the stripped target occurs in the output
"""
import re
from collections.abc import Callable
from fractions import Fraction

DEFAULT_ANSWER_SCORER = 'exact_strip'
DEFAULT_REFERENCE_SCORER = 'prefix_chars:64'
NAMES = ('exact', 'exact_strip', 'numeric', 'prefix_chars:N', 'contains')

# integers with optional thousands separators, decimals, simple fractions a/b
_NUMBER = re.compile(r'-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+')
# LaTeX fractions of plain numbers (MATH-style answers), rewritten a/b for _NUMBER
_LATEX_FRACTION = re.compile(r'\\[dt]?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(\d+(?:\.\d+)?)\s*\}')
_BOXED = '\\boxed{'
# non-integers only (0.1 written as 0.1000000001); integers compare exactly, whatever their size
_REL_TOL = 1e-9


class ScorerError(ValueError):
    """An unknown or malformed scorer name."""


def _number_value(text: str) -> Fraction | None:
    """Exact value of a :data:`_NUMBER` match (None: a zero denominator, or past int()'s 4300 digits, which a
    degenerate output may hold)."""
    num, _, den = text.replace(',', '').partition('/')
    try:
        if den and not Fraction(den):
            return None
        return Fraction(num) / Fraction(den) if den else Fraction(num)
    except ValueError:
        return None


def _last_boxed(text: str) -> str | None:
    """The content of the last closed ``\\boxed{...}``, nested braces included (``\\boxed{\\frac{3}{4}}``)."""
    start = text.rfind(_BOXED)
    while start != -1:
        depth, begin = 1, start + len(_BOXED)
        for i in range(begin, len(text)):
            depth += {'{': 1, '}': -1}.get(text[i], 0)
            if depth == 0:
                return text[begin:i]
        start = text.rfind(_BOXED, 0, start)  # unclosed (a cut-off output): the one before it
    return None


def final_value(text: str) -> Fraction | None:
    """The exact answer number of a text: the last ``\\boxed{}``'s, else the one after the last ``####``
    (GSM8K), else the last number anywhere; ``\\frac{a}{b}`` / ``\\dfrac{a}{b}`` / ``a/b`` read as the fraction
    a/b. None when there is none (or it divides by zero)."""
    boxed = _last_boxed(text)
    after_hashes = [text.rsplit('####', 1)[1]] if '####' in text else []
    for part in ([boxed] if boxed is not None else []) + after_hashes + [text]:
        numbers = _NUMBER.findall(_LATEX_FRACTION.sub(r'\1/\2', part))
        if numbers:
            return _number_value(numbers[-1])
    return None


def final_number(text: str) -> float | None:
    """:func:`final_value` as a float."""
    value = final_value(text)
    return None if value is None else float(value)


def _exact(output: str, target: str) -> float:
    return float(output == target)


def _exact_strip(output: str, target: str) -> float:
    return float(output.strip() == target.strip())


def _contains(output: str, target: str) -> float:
    return float(target.strip() in output)


def _numeric(output: str, target: str) -> float:
    got, want = final_value(output), final_value(target)
    if got is None or want is None:
        return 0.0
    if got.denominator == 1 or want.denominator == 1:  # 1234568 is not 1234567, however large
        return float(got == want)
    return float(abs(got - want) <= _REL_TOL * abs(want))


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
    if spec == 'numeric' and final_value(target) is None:  # '1/0' is no number: never equal
        raise ScorerError(f'scorer "numeric": the target {target[:40]!r} holds no number')
