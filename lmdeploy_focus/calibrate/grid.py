"""The calibration grid, its per-run metrics and the recommendation (no I/O, no torch)."""
from dataclasses import dataclass, field

from ..config.options import FOCUS_POLICIES
from ..stats import derived_metrics

BASELINE = 'baseline'  # delayed cache alone: the no-eviction reference of accuracy and cost
SHADOW = 'shadow'
EVICT = 'evict'
FAILED, NOT_RUN = 'failed', 'not run'  # runs that did not finish: it raised / the grid stopped before it


def failure_reason(error: BaseException) -> str:
    """One line for a run that raised or exited (the table's reason; also eval_quality's cells)."""
    if isinstance(error, SystemExit):
        return f'exited with status {error.code}'
    text = str(error).strip()
    return f'{type(error).__name__}: {text.splitlines()[0]}' if text else type(error).__name__


@dataclass(frozen=True)
class Cell:
    """One run: ``mode`` baseline / shadow / evict, with a policy and α except for the baseline."""
    mode: str
    policy: str | None = None
    alpha: float | None = None

    @property
    def label(self) -> str:
        return 'delayed cache (no eviction)' if self.mode == BASELINE else f'{self.policy} α {self.alpha:g} {self.mode}'

    def focus_options(self) -> dict:
        """The ``hf_overrides['dllm_focus']`` dict of this run (statistics on)."""
        # stock_step_rows 0: every decode step measured, the batch's tail too (stock steps would decode it as stock)
        options = dict(enable_delayed_cache=True, delayed_cache_commit='exact', track=True, stock_step_rows=0)
        if self.mode != BASELINE:
            options.update(enable_focus=True, focus_alpha=self.alpha, focus_policy=self.policy,
                           focus_shadow=self.mode == SHADOW)
        return options


@dataclass
class CellResult:
    cell: Cell
    counts: dict  # run_stats.KEYS -> float
    accuracy: float | None = None  # mean score over the tasks (None: no task has a target)
    seconds: float = 0.0
    outputs: list = field(default_factory=list)  # decoded text per task

    def _derived(self, name: str) -> float | None:
        return derived_metrics(self.counts)[name]  # the run report's ratios: one definition

    @property
    def recall(self) -> float | None:
        return self._derived('shadow_recall')

    @property
    def random_recall(self) -> float | None:
        return self._derived('random_recall')

    @property
    def kept_fraction(self) -> float | None:
        return self._derived('kept_fraction')

    @property
    def tokens_per_step(self) -> float | None:
        return self._derived('generated_per_step')

    @property
    def rows_per_token(self) -> float | None:
        """Rows through the deep layers per generated token: the cost FOCUS cuts."""
        return self._derived('processed_per_generated')


def plan(alphas, policies=FOCUS_POLICIES) -> list[Cell]:
    cells = [Cell(BASELINE)]
    for alpha in alphas:
        for policy in policies:
            cells += [Cell(SHADOW, policy, float(alpha)), Cell(EVICT, policy, float(alpha))]
    return cells


@dataclass(frozen=True)
class Recommendation:
    policy: str | None
    alpha: float | None
    reason: str
    withheld: bool = False  # not every run finished: no verdict either way

    @property
    def enable(self) -> bool:
        return self.policy is not None


def withheld(unfinished: int, total: int) -> Recommendation:
    return Recommendation(None, None, f'{unfinished} of {total} runs did not finish; the table shows the others, a '
                          'complete grid decides', withheld=True)


def recommend(results: list[CellResult], target_recall: float) -> Recommendation:
    """The (policy, α) with the fewest deep rows per generated token among those whose shadow recall meets
    ``target_recall`` and that evict at all (cheaper than the baseline); ties go to the smaller α."""
    by_cell = {r.cell: r for r in results}
    baseline = by_cell.get(Cell(BASELINE))
    base_cost = baseline.rows_per_token if baseline else None
    fits, misses = [], []
    for result in results:
        cell = result.cell
        if cell.mode != EVICT:
            continue
        shadow = by_cell.get(Cell(SHADOW, cell.policy, cell.alpha))
        recall, cost = shadow.recall if shadow else None, result.rows_per_token
        if recall is None or cost is None:
            continue  # never more candidates than the target: nothing to measure, nothing evicted
        (fits if recall >= target_recall else misses).append((cost, cell.alpha, cell.policy, recall))
    if not fits:
        best = max(misses, key=lambda m: m[3], default=None)
        detail = (f'; the best was {best[2]} at α {best[1]:g} with recall {best[3]:.3f}' if best else
                  '; no setting ever had more candidates than its target')
        return Recommendation(None, None, f'no setting reaches recall {target_recall:g}{detail}')
    cost, alpha, policy, recall = min(fits)
    if base_cost is not None and cost >= base_cost:
        return Recommendation(None, None, f'{policy} at α {alpha:g} reaches recall {recall:.3f} but processes no '
                              f'fewer rows than no eviction ({cost:.2f} vs {base_cost:.2f} per token)')
    saving = f', {1 - cost / base_cost:.0%} fewer deep rows per token than no eviction' if base_cost else ''
    return Recommendation(policy, alpha, f'recall {recall:.3f} >= {target_recall:g} at the lowest cost '
                          f'({cost:.2f} deep rows per generated token{saving})')
