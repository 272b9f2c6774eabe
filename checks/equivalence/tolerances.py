"""How close is close enough: float spacing per dtype, the near-tie rule and the logits tolerance.

Near-tie rule. Two runs see identical inputs at the step where their decisions first differ.
Arm A prefers ``x`` over ``y`` by ``g_A >= 0`` (logits for an argmax flip, log-confidences for a
selection flip), arm B prefers ``y`` by ``g_B >= 0``; so the difference ``x - y`` moved by
``g_A + g_B`` between the runs, which is at most twice the per-value noise. Hence with
``deciding gap = max(g_A, g_B)`` a pure rounding flip satisfies ``gap <= 2 * noise``: the default
factor is ``K = 2``. The noise is measured (max |difference| between the runs over the earlier
steps of the same sequence, on rows processed in both), with a floor of one unit in the last place
of the coarser dtype at the compared magnitude, since the measurement can come out as 0 when the
earlier steps happened to agree bit for bit.

Logits tolerance (for "logits of every step before agree"): ``max(8 ulp, rel * scale)`` where
``scale`` is the largest |top-1 logit| seen. ``rel`` is a documented heuristic per dtype: bf16 1/16
(activations are rounded to 8 significant bits at every layer), fp16 1/64, fp32 2^-10 (Triton's
``tl.dot`` uses TF32 for fp32 inputs by default), fp64 1e-9. The JSON reports the measured values
next to it, so the reader can judge a different bar.
"""
import math

NEAR_TIE_FACTOR = 2.0
TOLERANCE_ULPS = 8

MANTISSA_BITS = {'bfloat16': 7, 'float16': 10, 'float32': 23, 'float64': 52}
RELATIVE_TOLERANCE = {'bfloat16': 2**-4, 'float16': 2**-6, 'float32': 2**-10, 'float64': 1e-9}


def coarser(*dtypes: str) -> str:
    """The dtype with the fewest mantissa bits (unknown names count as bf16)."""
    return min(dtypes, key=lambda d: MANTISSA_BITS.get(d, MANTISSA_BITS['bfloat16']))


def relative_spacing(dtype: str) -> float:
    """Distance between neighbouring values relative to their magnitude (upper bound): 2^-mantissa."""
    return 2.0**-MANTISSA_BITS.get(dtype, MANTISSA_BITS['bfloat16'])


def ulp(dtype: str, magnitude: float) -> float:
    """Spacing of ``dtype`` values at ``magnitude`` (normal range)."""
    magnitude = abs(magnitude)
    if not math.isfinite(magnitude) or magnitude == 0:
        return relative_spacing(dtype)
    return 2.0**math.floor(math.log2(magnitude)) * relative_spacing(dtype)


def logits_tolerance(dtype: str, scale: float) -> float:
    relative = RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE['bfloat16'])
    return max(TOLERANCE_ULPS * ulp(dtype, scale), relative * scale)


def is_near_tie(gap: float, noise: float, floor: float, factor: float = NEAR_TIE_FACTOR) -> bool:
    return gap <= factor * max(noise, floor)
