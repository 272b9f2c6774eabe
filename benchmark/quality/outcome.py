"""What a backend returns for one (arm, threshold) cell."""
from dataclasses import dataclass

OK, MISSING, FAILED = 'ok', 'missing', 'failed'


@dataclass
class CellOutcome:
    arm: str
    threshold: float | None  # None: the unmasking strategy has no threshold
    status: str  # ok | missing (feature not built: the engine's message) | failed (any other error)
    reason: str | None = None
    config: dict | None = None  # engine-config kwargs, or the reference call's settings
    token_ids: list | None = None  # per task, in task order (status ok)
    errors: list | None = None  # per task: None, or why that request produced no output
    stats: dict | None = None  # raw decode counters (decode_stats.STAT_KEYS), None when unavailable
    stats_note: str | None = None  # why stats is None, or how it was obtained
    seconds: float | None = None  # wall time of the requests (not a throughput measurement)
