"""A request's own ``logits_processors`` that raise fail that request, not the engine loop.

Why: custom processors (``GenerationConfig.logits_processors``, Python API) run inside the batched sampler
(``lmdeploy.pytorch.engine.logits_process._apply_custom_logits_processors``); upstream lets whatever they raise, or
return, escape the step, which ends the engine loop and every request in flight with it.

How: the sampling fix (:mod:`.upstream_fixes.sampling`) hands each block row of a request one
:class:`RequestProcessors`, which runs the request's processors in order. If one raises, or returns something
upstream cannot put back into the row (None, a wrong shape), the guard notes the failure on the request's
sequence, for the step it happened in, and leaves the row's logits as they are; the request's other rows in that
step skip its processors. Before that step's outputs become responses (patch 7,
:func:`fail_requests_whose_processors_failed`; a step is known by its sequence list, which upstream builds the
sampling inputs from and hands back with the outputs), the engine loop's process stops that sequence and answers
its request ``INTERNAL_ENGINE_ERROR`` (the client gets the type, the log the session, exception and traceback);
none of the tokens sampled for it without its processors is sent. The neighbours' rows never see the failure.

Where the sampler runs in other processes (tensor parallelism, the mp / ray executors), the sampling inputs are
pickled and the sequence stays behind: there a processor's exception ends the loop, as upstream's does
(patch 11 names the cause in ``/health``).
"""
import traceback
from typing import NamedTuple

import torch

_FAILED = '_lmdeploy_focus_processor_failures'  # on the sequence: its request's Failures
# the steps (RequestProcessors._step) with a failure not yet handled: the host looks at the batch only for those
_FAILED_STEPS: set[int] = set()


class RequestProcessors:
    """One request's logits processors, run in order on one of its rows, under a guard."""

    def __init__(self, processors: list, seq=None, step_list=None):
        self.processors = processors
        self._seq = seq  # None where unpickled in another process: no guard there
        self._resp = getattr(seq, 'resp', None)
        # the step's sequence list, the one the engine loop hands patch 7 with its outputs: a step is id() of it
        self._step_list = step_list
        self._step = id(step_list)

    def __reduce__(self):
        return RequestProcessors, (self.processors, )

    def __call__(self, token_ids, scores: torch.Tensor) -> torch.Tensor:
        if self._seq is None:
            return _run(self.processors, token_ids, scores)
        failures = _failures(self._seq, self._resp)
        if failures is not None and self._step in failures.by_step:
            return scores  # this step failed on another of the request's rows: its tokens are never sent
        try:
            return _run(self.processors, token_ids, scores)
        except BaseException as exc:  # noqa: BLE001 - user code: anything it raises is this request's failure
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                raise
            # text only: the exception's traceback holds this frame, whose scores view the step's whole logits
            _failures(self._seq, self._resp, create=True).by_step[self._step] = Failure(
                f'{type(exc).__name__}: {exc}', ''.join(traceback.format_exception(exc)), self._step_list)
            _FAILED_STEPS.add(self._step)
            return scores


class Failure(NamedTuple):
    error: str
    traceback: str
    # held so that its id() is not reused while the failure is kept (a step dropped without outputs keeps one)
    step_list: object


class Failures(NamedTuple):
    """A request's failed steps (kept on its sequence); a session's next request has another response object."""
    resp: object
    by_step: dict  # step (see RequestProcessors._step) -> Failure; a step's entry goes when its outputs are handled


def _failures(seq, resp, create: bool = False) -> Failures | None:
    failures = seq.__dict__.get(_FAILED)
    if failures is None or failures.resp is not resp:
        if not create:
            return None
        failures = seq.__dict__[_FAILED] = Failures(resp, {})
    return failures


def _run(processors, token_ids, row: torch.Tensor) -> torch.Tensor:
    """Upstream's order (``logits[i] = processor(ids, logits[i])`` per processor), on the row view."""
    for processor in processors:
        out = processor(token_ids, row)
        if out is row:
            continue
        try:
            row[...] = out if isinstance(out, torch.Tensor) else torch.as_tensor(out, dtype=row.dtype)
        except Exception as exc:  # noqa: BLE001 - whatever upstream's assignment would have raised outside the guard
            what = f'shape {tuple(out.shape)}' if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f'logits processor {processor!r} returned {what}, which does not fit the row of scores '
                            f'(shape {tuple(row.shape)}): {exc}') from None
    return row


def fail_requests_whose_processors_failed(running) -> None:
    """Fail each request of ``running`` whose processors raised in this step (the step whose outputs are about
    to become responses). A failure in a step queued after it waits for that step's outputs: the request may
    finish in this one, with its processors applied."""
    if id(running) not in _FAILED_STEPS:  # the common case: one set lookup a step, no walk over the batch
        return
    _FAILED_STEPS.discard(id(running))
    from lmdeploy.pytorch.messages import MessageStatus

    from ..failed_request import fail_request
    for seq in running:
        failures = _failures(seq, getattr(seq, 'resp', None))
        failure = failures.by_step.pop(id(running), None) if failures is not None else None
        if failure is None or seq.status != MessageStatus.RUNNING:
            continue  # none in this step, or already stopped (failed, aborted, finished)
        fail_request(seq, failure.error, 'in its own logits processor', details=failure.traceback)
