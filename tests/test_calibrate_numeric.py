"""The ``numeric`` scorer (shared by calibrate and eval_quality), found by a bug-hunting review: a relative
tolerance of 1e-6 took 1234568 for 1234567, and ``\\boxed{}`` with nested braces read ``\\frac{1}{4}`` as 4."""
import pytest

from lmdeploy_focus.calibrate.scorers import final_number, get_scorer
from lmdeploy_focus.calibrate.task_file import parse_task

numeric = get_scorer('numeric')


@pytest.mark.parametrize('output, target', [
    ('1234568', '1234567'),
    ('The total is 2999999.', '3000000'),
    ('9,999,990', '10,000,000'),
    ('12345678901234568', '12345678901234567'),  # past float's 2**53: still exact
    ('1234568.5', '1234567.5'),
    (r'so the answer is $\boxed{\frac{1}{4}}$', r'\boxed{\frac{3}{4}}'),
], ids=['off-by-one', 'off-by-one-text', 'off-by-ten', 'past-2**53', 'non-integer', 'boxed-frac'])
def test_a_wrong_number_scores_zero(output, target):
    assert numeric(output, target) == 0.0


@pytest.mark.parametrize('output, target', [
    (r'$\boxed{\frac{3}{4}}$', '3/4'),
    (r'\boxed{\dfrac{3}{4}}', '0.75'),
    (r'\boxed{-\frac{1}{4}}', '-0.25'),
    (r'first \boxed{2}, finally \boxed{\frac{10}{4}}', '5/2'),  # the last \boxed, braces matched
    ('The answer is 72.0', '#### 72'),
    ('0.30000000000000004', '0.3'),  # non-integers: a small relative tolerance
], ids=['frac-vs-slash', 'dfrac-vs-decimal', 'negative', 'last-boxed', 'gsm8k', 'float-noise'])
def test_the_same_number_written_otherwise_scores_one(output, target):
    assert numeric(output, target) == 1.0


def test_a_latex_fraction_target_is_read_as_the_fraction_at_load():
    task = parse_task({'prompt': 'p', 'answer': r'\boxed{\frac{3}{4}}', 'scorer': 'numeric'}, 'f.jsonl', 1)
    assert final_number(task.target) == 0.75  # it read 4.0, and any output ending in 4 scored 1


def test_a_number_past_int_digit_limit_scores_zero_instead_of_raising():
    assert numeric('1' * 5000, '3') == 0.0  # a degenerate output: no crash while scoring after the run
