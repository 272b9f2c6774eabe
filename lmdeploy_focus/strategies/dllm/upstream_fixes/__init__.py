"""LMDeploy 0.18 DLLM defects that disturb other requests of a batch or cut outputs wrongly, fixed by
subclassing, one file per upstream role (each file: Why / How / Removed by):

* :mod:`.sampling`: per-request sampling parameters and logits processors on their own block rows, one
  random stream per block position, ``response_format`` dropped with a warning; with :mod:`.logit_bias`
  (a ``logit_bias`` map as one op per row) and :mod:`.own_history` (repetition penalty, n-gram filter and
  ``min_new_tokens`` on the request's own output, per position);
* :mod:`.stopping`: stop-word padding, a length cut never winning over an earlier stop word, and the
  agent strategy mixin that installs the criteria;
* :mod:`.inputs`: chunked prefill's inference tensors updated in place (step inputs, mask, counter);
* :mod:`.outputs`: where an output starts, a session's next turn after an abort, block-aware logprobs.

With every FOCUS option off the strategy factory builds these instead of upstream's classes; the
delayed-cache and tracking strategies inherit them. The names are re-exported here.
"""
from .inputs import FixedDLLMStepInputs, writable
from .outputs import FixedDLLMSequenceStrategy, FixedSchedulerSequenceDLLM
from .sampling import PER_REQUEST_VECTORS, POSITION_SEED_STRIDE, FixedDLLMSamplingStrategy
from .stopping import FixedDLLMModelAgentStrategy, PaddingSafeDLLMStoppingCriteria, UpstreamFixesMixin

__all__ = ['FixedDLLMModelAgentStrategy', 'FixedDLLMSamplingStrategy', 'FixedDLLMSequenceStrategy', 'FixedDLLMStepInputs',
           'FixedSchedulerSequenceDLLM', 'PER_REQUEST_VECTORS', 'POSITION_SEED_STRIDE', 'PaddingSafeDLLMStoppingCriteria',
           'UpstreamFixesMixin', 'writable']
