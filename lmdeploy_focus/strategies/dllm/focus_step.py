"""What a FOCUS decode step carries from its start (host bookkeeping) to the end of the forward.

Built by the runtime next to the delayed-cache processing set; layer 0 adds its importance,
layer 1 its selection and the kept layout, and the agent strategy reads the outcome (new block
progress, the selection for shadow statistics) after unmasking.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FocusConfig:
    alpha: float
    policy: str  # 'importance' | 'leftmost'
    shadow: bool  # compute the selection, evict nothing
    eviction_layer: int = 1  # importance at layers 0 and 1, eviction inside layer 1 (spec §3.1)
    tp_size: int | None = None  # attention TP ranks the importance delta is summed over (None: ask lmdeploy)

    @property
    def needs_importance(self) -> bool:
        return self.policy == 'importance'


@dataclass
class FocusStep:
    config: FocusConfig
    candidate: torch.Tensor  # bool [N]: row is a MASKED block position (eviction candidate)
    candidate_dense: torch.Tensor  # bool [B, L]
    num_candidates: torch.Tensor  # int64 [B]
    avg_decoded: torch.Tensor  # float32 [B]
    progress: torch.Tensor  # int64 [B]: block progress before this step
    block_pos: torch.Tensor  # int64 [N]: block position of each processed row (before eviction)
    history: torch.Tensor  # int64 [B]: block start (cache position of block position 0)
    importance0: torch.Tensor | None = None  # float32 [N], set by layer 0
    # set inside the eviction layer
    selected_dense: torch.Tensor | None = None  # bool [B, L]: candidates the policy keeps
    evicting: torch.Tensor | None = None  # bool [B]: sequence had more candidates than its target
    progress_out: torch.Tensor | None = None  # int64 [B]
    processed_rows: int = 0  # rows into layers 0-1
    kept_rows: int = 0  # rows through layers >= 2 and the LM head
