"""Awaiting the GPU before a delayed-cache / FOCUS decode step (experimental, off by default).

A delayed-cache decode step reads its row counts on the host between its front and its deep graph, the
step's one synchronous read (BENCHMARKS.md). The engine thread reaches that read while the previous step's
deep layers, LM head and sampling are still queued on the GPU, so it blocks there for most of a step
(55–61 % of the wall time at SDAR-8B bs 256), and the asyncio loop it runs, which also delivers outputs and
takes new requests, stops with it. With ``LMDEPLOY_FOCUS_AWAIT_STREAM=1`` the model agent first awaits the
work already queued on its stream (an event polled from the loop, as upstream's ``get_output_async`` polls
its output event), so the read then waits for the step's front alone and the loop runs meanwhile.

Off by default until measured on a GPU: once the stream has drained, the GPU idles until the loop comes back
to this task, which costs throughput when other tasks hold the loop.
"""
import asyncio
import os

import torch

AWAIT_STREAM_ENV = 'LMDEPLOY_FOCUS_AWAIT_STREAM'


def await_stream_requested() -> bool:
    """``$LMDEPLOY_FOCUS_AWAIT_STREAM``: '1' on, '0' or unset off; anything else is refused."""
    value = os.environ.get(AWAIT_STREAM_ENV, '').strip()
    if value not in ('', '0', '1'):
        raise ValueError(f'${AWAIT_STREAM_ENV} must be 0 or 1, got {value!r}')
    return value == '1'


async def drain_current_stream(make_event=None) -> None:
    """Return once the work queued so far on the current CUDA stream has run, yielding to the loop while
    it runs. ``make_event`` (tests) builds the event; without CUDA there is nothing to wait for."""
    if make_event is None:
        if not torch.cuda.is_available():
            return
        make_event = torch.cuda.Event
    event = make_event()
    event.record()
    while not event.query():
        await asyncio.sleep(0)
