"""Per-request timings -> the throughput and latency numbers of a run.

Definitions (all wall-clock, taken in the benchmark process around the engine's stream):
* TTFT: request submit -> first streamed output that carries tokens. For a DLLM that is the first
  decoded block, not one token.
* TPOT: (last output - first output) / (output tokens - 1), per request.
* ITL: gap between consecutive streamed outputs that carry tokens (one gap per output, so for a
  DLLM a gap usually covers several tokens).
* E2E: submit -> last output (or the repetition-guard stop).
Output tokens are the tokens counted per request (up to the repetition-guard point when it fired).
"""
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 95, 99)
# A run of at most this many requests also records each one's timeline (``summarize``): at small batches the
# order in which the engine serves prompts that arrive together (lock-stepped waves) sets the mean TTFT.
TIMELINE_MAX_REQUESTS = 64


@dataclass
class RequestRecord:
    input_len: int
    start: float
    chunk_times: list = field(default_factory=list)  # arrival time of each output that carried tokens
    chunk_sizes: list = field(default_factory=list)
    end: float = 0.0
    output_len: int = 0
    status: str = 'finish'  # finish | repeat_stopped | error
    error: str = ''

    def add_chunk(self, when: float, n_tokens: int):
        if n_tokens > 0:
            self.chunk_times.append(when)
            self.chunk_sizes.append(n_tokens)

    @property
    def ok(self) -> bool:
        return self.status != 'error' and self.output_len > 0

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.output_len < 2:
            return None
        return (self.end - self.chunk_times[0]) / (self.output_len - 1)

    @property
    def itls(self) -> list:
        return list(np.diff(self.chunk_times)) if len(self.chunk_times) > 1 else []


def distribution(values) -> dict | None:
    """mean and percentiles, or None when there is nothing to summarise."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return None
    out = {'mean': float(arr.mean())}
    out.update({f'p{p}': float(np.percentile(arr, p)) for p in PERCENTILES})
    return out


def _scaled(dist: dict | None, factor: float) -> dict | None:
    return None if dist is None else {k: round(v * factor, 3) for k, v in dist.items()}


def summarize(records: list, duration: float) -> dict:
    """Throughput over the timed region and latency distributions (ms; end-to-end in s)."""
    ok = [r for r in records if r.ok]
    input_tokens = sum(r.input_len for r in ok)
    output_tokens = sum(r.output_len for r in ok)
    duration = max(duration, 1e-9)
    return {
        'duration_s': round(duration, 3),
        'requests': len(records),
        'completed': len(ok),
        'failed': len(records) - len(ok),
        'repeat_stopped': sum(r.status == 'repeat_stopped' for r in ok),
        'input_tokens': input_tokens,
        'output_tokens': output_tokens,
        'request_per_s': round(len(ok) / duration, 3),
        'input_tok_per_s': round(input_tokens / duration, 1),
        'output_tok_per_s': round(output_tokens / duration, 1),
        'total_tok_per_s': round((input_tokens + output_tokens) / duration, 1),
        'mean_input_len': round(input_tokens / len(ok), 1) if ok else None,
        'mean_output_len': round(output_tokens / len(ok), 1) if ok else None,
        'ttft_ms': _scaled(distribution(r.ttft for r in ok), 1e3),
        'tpot_ms': _scaled(distribution(r.tpot for r in ok), 1e3),
        'itl_ms': _scaled(distribution(x for r in ok for x in r.itls), 1e3),
        'e2e_s': _scaled(distribution(r.e2e for r in ok), 1.0),
        **({'request_timeline_ms': timeline(records)} if 0 < len(records) <= TIMELINE_MAX_REQUESTS else {}),
    }


def timeline(records: list) -> list:
    """Per request, in prompt order: [submit, first output, last output] in ms from the first submit (None where a
    request failed), so which prompts were served first can be read off a small run."""
    origin = min(r.start for r in records)
    ms = lambda t: round((t - origin) * 1e3, 1)  # noqa: E731
    return [[ms(r.start), ms(r.chunk_times[0]), ms(r.end)] if r.ok else [ms(r.start), None, None] for r in records]
