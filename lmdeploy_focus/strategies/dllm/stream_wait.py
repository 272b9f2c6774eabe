"""Awaiting the last step's deep layers before the next delayed-cache / FOCUS decode step (on by default).

A delayed-cache decode step reads its row counts on the host between its front and its deep graph, the
step's one synchronous read (BENCHMARKS.md). The engine thread reaches that read while the previous step's
deep layers are still queued on the GPU, so it blocks there for most of a step (55–61 % of the wall time at
SDAR-8B bs 256), and the asyncio loop it runs stops with it: request intake and the sending of outputs
already handed over wait. So the runtime records an event once a step's
deep graph is launched (:meth:`~.delayed_cache_runtime.DelayedCacheRuntime.deep_launched`), and the agent
awaits it before the next decode forward (patch 18), polling from the loop every :data:`POLL_S`. The
previous step's tail (LM head, sampling, unmasking: ~4 ms at SDAR-8B bs 256) still runs on the GPU while the
host prepares the next forward, so the GPU need not idle; the read then waits for that tail and the front.
The previous step's own output is not delivered sooner: it is ready only after its tail.

Measured on an H100 (BENCHMARKS.md, 2026-12-06): the mean gap between streamed outputs drops 2.4–4.7x
(SDAR-8B bs 256: 5.2 s -> 1.1 s, below stock's 2.0 s; it was above stock's before), output tok/s moves
-2.3 % to +1.2 % (bs 64 / 256, static unmasking, graphs). So it is the default; ``LMDEPLOY_FOCUS_AWAIT_STREAM=0``
turns it off. A poll that comes back late, or a forward whose host work outlasts the previous step's tail,
leaves the GPU idle: up to about a poll a step where the tail is short. At bs 1-16 (SDAR-8B, H100) the await
moved single-wave throughput by -6.6 % to +5.5 % with no consistent direction (BENCHMARKS.md).
"""
import asyncio

from ...config.env_switch import env_switch

AWAIT_STREAM_ENV = 'LMDEPLOY_FOCUS_AWAIT_STREAM'
# Seconds between polls, as upstream's get_output_async: a timer's real granularity on both loops (asyncio's
# epoll rounds up to whole ms; uvloop rounds to whole ms, so 0.5 ms would become a busy spin), and below the
# ~4 ms tail the wait overlaps.
POLL_S = 0.001


def await_stream_requested() -> bool:
    """``$LMDEPLOY_FOCUS_AWAIT_STREAM``: '1' or unset on, '0' off; anything else is refused."""
    return env_switch(AWAIT_STREAM_ENV, default=True)


async def wait_for_event(event, poll_s: float = POLL_S) -> None:
    """Return once ``event`` (a recorded ``torch.cuda.Event``) has completed, the loop free meanwhile."""
    while not event.query():
        await asyncio.sleep(poll_s)
