"""The tiny model families the engine-path tests run on, each with its plain-torch reference."""
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
                             hf_overrides: dict | None = None) -> tuple[TinyDLLM, SDARReference]:
    """A freshly seeded tiny model of ``family`` (SDAR: fp32 engine; the MoEs: fp64, see llada2_cpu)
    and the fp64 reference built from the same weights."""
    if family not in _FAMILIES:
        raise ValueError(f'unknown model family {family!r}; choose from {FAMILIES}')
    shape_cls, build, reference_cls = _FAMILIES[family]
    shape = shape_cls() if num_layers is None else shape_cls(num_layers=num_layers)
    tiny = build(shape, block_length=block_length, hf_overrides=hf_overrides)
    return tiny, reference_cls(tiny.weights_as(torch.float64), tiny.hf_config)
