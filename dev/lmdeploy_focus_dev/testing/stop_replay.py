"""Where the engine ends a DLLM output, on host data: replay unmasker outputs through the engine's
DLLM sequence + stopping criteria (upstream's with the plugin's fixes), as the engine loop does.

Used by tests to check the reference decode loop's and the serving check's stop rule against the
engine's own classes.
"""
from types import SimpleNamespace

import numpy as np
import torch
from lmdeploy.pytorch.config import DLLMConfig
from lmdeploy.pytorch.messages import SamplingParam, SchedulerSession, SequenceMeta, UpdateTokenMode
from lmdeploy.pytorch.strategies.dllm.model_agent import DLLMExtraInputs

from lmdeploy_focus.strategies.dllm.upstream_fixes import FixedDLLMModelAgentStrategy, FixedDLLMSequenceStrategy


def replay_stop(prompt: list, steps: list, block_length: int, mask_token_id: int, max_new_tokens: int,
                stop_token_ids=None) -> tuple[list, int] | None:
    """(generated ids, index of the stopping step), or None when no step stops the sequence.

    ``steps``: objects with ``kind`` ('prefill' for the first), ``history_length``, ``next_token_ids``
    and ``next_mask`` (int tensors [L]) in the engine's order: decode steps, commit steps.
    """
    L = block_length
    strategy = FixedDLLMSequenceStrategy(L, mask_token_id)
    session = SchedulerSession(0, SequenceMeta(block_size=16, strategy=strategy), lifecycle=None)
    seq = strategy.make_sequence(seq_id=0, session=session, sampling_param=SamplingParam(max_new_tokens=max_new_tokens))
    seq.update_token_ids(torch.tensor(prompt), mode=UpdateTokenMode.INPUTS)
    criteria = FixedDLLMModelAgentStrategy(DLLMConfig(block_length=L), mask_token_id).make_stopping_criteria([seq])
    stop_words = torch.tensor(stop_token_ids)[None].repeat(L, 1) if stop_token_ids else None
    for i, step in enumerate(steps):
        inputs = SimpleNamespace(history_lengths=torch.tensor([step.history_length]), seq_length=torch.tensor([L]))
        stopped, stop_pos, criteria = criteria.step(step.next_token_ids.clone(), stop_words, inputs=inputs,
                                                    extra_inputs=DLLMExtraInputs(dllm_mask=step.next_mask.clone()))
        mode = UpdateTokenMode.PREFILL if step.kind == 'prefill' else UpdateTokenMode.DECODE
        seq.update_token_ids(step.next_token_ids.clone(), dllm_mask=step.next_mask.numpy().astype(np.uint8),
                             mode=mode)
        if bool(stopped[0]):
            seq.set_stop_pos(int(stop_pos[0]))
            return seq.generated_ids.tolist(), i
    return None
