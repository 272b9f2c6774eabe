"""The fork's repetition guard (``--repeat-block-detect --repeat-block-window W``).

A request stops once its output ends in ``REPEATS`` identical consecutive windows. The window is the
largest size <= W that fits ``REPEATS`` times into the output so far, and at least ``MIN_WINDOW``;
tokens up to the detection point still count. With random weights greedy decoding loops quickly, and
for real models this bounds runaway generations that would otherwise dominate the timing.
"""

REPEATS = 3
MIN_WINDOW = 8


def repeat_point(tokens: list, start: int, window: int = 32) -> int | None:
    """Smallest length n in (start, len(tokens)] at which tokens[:n] ends in a repeated block, else None.

    DLLM outputs arrive a block at a time, so every length reached inside the new chunk is checked.
    """
    for n in range(max(start + 1, REPEATS * MIN_WINDOW), len(tokens) + 1):
        w = min(window, n // REPEATS)
        if w < MIN_WINDOW:
            continue
        last = tokens[n - w:n]
        if all(tokens[n - (k + 1) * w:n - k * w] == last for k in range(1, REPEATS)):
            return n
    return None


class RepeatGuard:
    """Feeds streamed chunks; ``stop_at`` becomes the counted output length once repetition is seen."""

    def __init__(self, window: int = 32):
        if window < MIN_WINDOW:
            raise ValueError(f'--repeat-block-window must be >= {MIN_WINDOW}')
        self.window = window
        self.tokens = []
        self.stop_at = None

    def feed(self, chunk: list) -> bool:
        """Add streamed tokens; True when the request should be cancelled."""
        if self.stop_at is not None:
            return True
        start = len(self.tokens)
        self.tokens.extend(chunk)
        self.stop_at = repeat_point(self.tokens, start, self.window)
        return self.stop_at is not None
