"""The tiny model families the engine-path tests run on, each with its plain-torch reference."""
import torch

from lmdeploy_focus.reference.llada2_model import LLaDA2Reference
from lmdeploy_focus.reference.sdar_model import SDARReference
from lmdeploy_focus.reference.sdar_moe_model import SDARMoeReference
from lmdeploy_focus.testing.llada2_cpu import TinyLLaDA2Shape, build_tiny_llada2
from lmdeploy_focus.testing.sdar_cpu import TinySDARShape, build_tiny_sdar
from lmdeploy_focus.testing.sdar_moe_cpu import TinySDARMoeShape, build_tiny_sdar_moe
from lmdeploy_focus.testing.tiny_model import TinyDLLM

FAMILIES = ('sdar', 'sdar_moe', 'llada2')


def tiny_model_and_reference(family: str, block_length: int, num_layers: int | None = None,
                             hf_overrides: dict | None = None) -> tuple[TinyDLLM, SDARReference]:
    """A freshly seeded tiny model of ``family`` (SDAR: fp32 engine; the MoEs: fp64, see llada2_cpu)
    and the fp64 reference built from the same weights."""
    if family == 'sdar':
        shape = TinySDARShape() if num_layers is None else TinySDARShape(num_layers=num_layers)
        tiny = build_tiny_sdar(shape, block_length=block_length, hf_overrides=hf_overrides)
        return tiny, SDARReference(tiny.weights_as(torch.float64), tiny.hf_config)
    if family == 'sdar_moe':
        shape = TinySDARMoeShape() if num_layers is None else TinySDARMoeShape(num_layers=num_layers)
        tiny = build_tiny_sdar_moe(shape, block_length=block_length, hf_overrides=hf_overrides)
        return tiny, SDARMoeReference(tiny.weights_as(torch.float64), tiny.hf_config)
    if family == 'llada2':
        shape = TinyLLaDA2Shape() if num_layers is None else TinyLLaDA2Shape(num_layers=num_layers)
        tiny = build_tiny_llada2(shape, block_length=block_length, hf_overrides=hf_overrides)
        return tiny, LLaDA2Reference(tiny.weights_as(torch.float64), tiny.hf_config)
    raise ValueError(f'unknown model family {family!r}; choose from {FAMILIES}')
