"""The tiny model families the engine-path tests run on, each with its plain-torch reference."""
import secrets
from collections.abc import Callable

import torch

from lmdeploy_focus_dev.reference.llada2_model import LLaDA2Reference
from lmdeploy_focus_dev.reference.sdar_model import SDARReference
from lmdeploy_focus_dev.reference.sdar_moe_model import SDARMoeReference
from lmdeploy_focus_dev.testing.llada2_cpu import TinyLLaDA2Shape, build_tiny_llada2
from lmdeploy_focus_dev.testing.sdar_cpu import TinySDARShape, build_tiny_sdar
from lmdeploy_focus_dev.testing.sdar_moe_cpu import TinySDARMoeShape, build_tiny_sdar_moe
from lmdeploy_focus_dev.testing.tiny_model import TinyDLLM

# family -> (shape class, builder, reference class)
_FAMILIES = {
    'sdar': (TinySDARShape, build_tiny_sdar, SDARReference),
    'sdar_moe': (TinySDARMoeShape, build_tiny_sdar_moe, SDARMoeReference),
    'llada2': (TinyLLaDA2Shape, build_tiny_llada2, LLaDA2Reference),
}
FAMILIES = tuple(_FAMILIES)


def tiny_model_and_reference(family: str, block_length: int, num_layers: int | None = None,
                             hf_overrides: dict | None = None, dllm_config=None) -> tuple[TinyDLLM, SDARReference]:
    """A freshly seeded tiny model of ``family`` (SDAR: fp32 engine; the MoEs: fp64, see llada2_cpu)
    and the fp64 reference built from the same weights; ``dllm_config``: the engine's unmasking settings."""
    if family not in _FAMILIES:
        raise ValueError(f'unknown model family {family!r}; choose from {FAMILIES}')
    shape_cls, build, reference_cls = _FAMILIES[family]
    shape = shape_cls() if num_layers is None else shape_cls(num_layers=num_layers)
    tiny = build(shape, block_length=block_length, hf_overrides=hf_overrides, dllm_config=dllm_config)
    return tiny, reference_cls(tiny.weights_as(torch.float64), tiny.hf_config)


# Engine and reference router scores, and FOCUS importance deltas, differ by rounding noise (~1e-7: attention
# is fp32 on both sides), so a routing or selection decided by a smaller gap than this may legitimately go the
# other way.
DECISION_TIE = 1e-5


def prompts_clear_of_ties(reference: SDARReference, lengths: tuple[int, ...], vocab: int,
                          generate: Callable[[list[list[int]]], list], tries: int = 10):
    """Random prompts of ``lengths`` (ids below ``vocab``) whose reference run ``generate(prompts)``
    routes every token (MoE families) and makes every FOCUS importance selection by a clear margin;
    redrawn otherwise. Returns ``(seed, prompts, results)``, the seed reproducing the prompts."""
    for _ in range(tries):
        seed = secrets.randbits(31)
        gen = torch.Generator().manual_seed(seed)
        prompts = [torch.randint(0, vocab, (n, ), generator=gen).tolist() for n in lengths]
        reference.routing_margins, reference.selection_margins = [], []
        try:
            results = generate(prompts)
            margins = reference.routing_margins + reference.selection_margins
        finally:
            reference.routing_margins = reference.selection_margins = None
        if min(margins, default=float('inf')) >= DECISION_TIE:
            return seed, prompts, results
    raise AssertionError(f'{tries} prompt draws all routed a token or selected FOCUS rows on a near tie '
                         f'(gap < {DECISION_TIE})')
