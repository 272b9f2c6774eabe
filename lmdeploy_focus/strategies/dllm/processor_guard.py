"""A request's own ``logits_processors`` that raise fail that request, not the engine loop.

Why: custom processors (``GenerationConfig.logits_processors``, Python API) run inside the batched sampler
(``lmdeploy.pytorch.engine.logits_process._apply_custom_logits_processors``); upstream lets whatever they raise, or
return, escape the step, which ends the engine loop and every request in flight with it.

How: the sampling fix (:mod:`.upstream_fixes.sampling`) hands each block row of a request one
:class:`RequestProcessors`, which runs the request's processors in order. If one raises, or returns something
upstream cannot put back into the row (not a tensor of the row's shape), the guard notes the failure on the
request's sequence and leaves the row's logits as they are; the request's other rows, in this step and in any
step already queued, skip its processors. Before the step's outputs become responses (patch 7,
:func:`fail_requests_whose_processors_failed`), the engine loop's process stops that sequence and answers its
request ``INTERNAL_ENGINE_ERROR`` (the log names the session and the exception); none of the tokens sampled for
it without its processors is sent. The neighbours' rows never see the failure.

Where the sampler runs in other processes (tensor parallelism, the mp / ray executors), the sampling inputs are
pickled and the sequence stays behind: there a processor's exception ends the loop, as upstream's does
(patch 11 names the cause in ``/health``).
"""
import torch

_FAILED = '_lmdeploy_focus_processor_failure'  # on the sequence: (the request's response object, exception)


class RequestProcessors:
    """One request's logits processors, run in order on one of its rows, under a guard."""

    def __init__(self, processors: list, seq=None):
        self.processors = processors
        self._seq = seq  # None where unpickled in another process: no guard there
        self._resp = getattr(seq, 'resp', None)

    def __reduce__(self):
        return RequestProcessors, (self.processors, )

    def __call__(self, token_ids, scores: torch.Tensor) -> torch.Tensor:
        if self._seq is None:
            return _run(self.processors, token_ids, scores)
        failed = self._seq.__dict__.get(_FAILED)
        if failed is not None and failed[0] is self._resp:
            return scores  # failed earlier: the request is being failed, its tokens are never sent
        try:
            return _run(self.processors, token_ids, scores)
        except Exception as exc:  # noqa: BLE001 - user code: anything it raises is this request's failure
            self._seq.__dict__[_FAILED] = (self._resp, exc)
            return scores


def _run(processors, token_ids, scores: torch.Tensor) -> torch.Tensor:
    for processor in processors:
        out = processor(token_ids, scores)
        if not _fits(out, scores):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f'logits processor {processor!r} returned {shape}; a logits processor must return '
                            f'the row\'s scores, a tensor of shape {tuple(scores.shape)}')
        scores = out
    return scores


def _fits(out, scores: torch.Tensor) -> bool:
    """Whether upstream can assign ``out`` to the row (``logits[row] = out``)."""
    if not isinstance(out, torch.Tensor):
        return False
    try:
        return torch.broadcast_shapes(out.shape, scores.shape) == scores.shape
    except RuntimeError:
        return False


def fail_requests_whose_processors_failed(running) -> None:
    """Fail each running request whose processors raised in the step whose outputs are about to be sent."""
    from lmdeploy.pytorch.messages import MessageStatus

    from ..failed_request import fail_request
    for seq in running:
        failed = seq.__dict__.get(_FAILED)
        if failed is None or failed[0] is not getattr(seq, 'resp', None) or seq.status != MessageStatus.RUNNING:
            continue  # none, an earlier request's, or already stopped (failed, aborted or finished)
        fail_request(seq, failed[1], 'in its own logits processor')
