"""The quality evaluation's arms (labels of rows of the one arm table, ``benchmark/arms``) and the settings
every arm of a run shares.

Every arm runs with ``dllm_track=True`` so that the engine collects decode statistics. The
confidence threshold is not part of an arm: each arm runs at every ``--thresholds`` value, so
FOCUS is never compared with a baseline at a looser threshold (the fork's 0.8 vs 0.9, spec §6).
"""
from dataclasses import dataclass

from arms import arm_fields, canonical
from throughput.engine_runner import AR_SIZING_BLOCK, KV_PAGE

from lmdeploy_focus.config.compat import UNMASKING_STRATEGIES

UNMASKING = UNMASKING_STRATEGIES
DEFAULT_UNMASKING = 'low_confidence_dynamic'
DEFAULT_THRESHOLDS = (0.7, 0.8, 0.9)


# report labels, in report order; their FOCUS fields come from the shared table
ARMS: dict[str, dict] = {name: arm_fields(name, stock_steps=False) for name in (
    'stock', 'delayed_fast', 'delayed_exact', 'focus_a1.0', 'focus_a1.5', 'focus_a1.5_fast', 'focus_a2', 'focus_a3',
    'focus_leftmost', 'focus_auto', 'focus_auto_leftmost', 'shadow')}
BASELINE_ARM = 'stock'


@dataclass(frozen=True)
class RunSettings:
    """What every (arm, threshold) cell of a run shares."""
    block_length: int | None  # None: the engine resolves it (the reference backend needs it)
    unmasking_strategy: str = DEFAULT_UNMASKING
    denoising_steps: int | None = None  # None: one token per step for static / sequential
    concurrency: int = 64  # requests in flight = max_batch_size (reference: prompts per batch)
    eager_mode: bool = False
    cache_max_entry_count: float = 0.8
    session_len: int | None = None

    @property
    def thresholds_matter(self) -> bool:
        return self.unmasking_strategy == 'low_confidence_dynamic'

    def resolved_denoising_steps(self) -> int | None:
        return self.denoising_steps or self.block_length


def check_arms(names: list[str]) -> list[str]:
    """The report labels of ``names``, given as labels or as any name of the arm table (``focus-auto``,
    ``focus-importance``); order kept, repeats dropped."""
    label_of = {canonical(label): label for label in ARMS}

    def label(name):
        try:
            return label_of.get(canonical(name))
        except ValueError:
            return None

    labels = [label(n) for n in names]
    unknown = [n for n, lab in zip(names, labels) if lab is None]
    if unknown:
        raise ValueError(f'unknown arm(s) {unknown}; known: {", ".join(ARMS)}')
    return list(dict.fromkeys(labels))


def focus_fields(arm: str) -> dict:
    """The arm's FOCUS fields plus ``dllm_track`` (on for every arm)."""
    return {**ARMS[arm], 'dllm_track': True}


def engine_config_kwargs(arm: str, threshold: float | None, settings: RunSettings) -> dict:
    """``PytorchEngineConfig`` kwargs of one cell; sizing as profile_throughput (batch = concurrency,
    prefill budget concurrency * L, KV page 64, prefix caching off)."""
    c = settings.concurrency
    kwargs = dict(max_batch_size=c,
                  max_prefill_token_num=c * (settings.block_length or AR_SIZING_BLOCK),
                  block_size=KV_PAGE,
                  cache_max_entry_count=settings.cache_max_entry_count,
                  enable_prefix_caching=False,
                  eager_mode=settings.eager_mode,
                  dllm_unmasking_strategy=settings.unmasking_strategy)
    optional = dict(session_len=settings.session_len,
                    dllm_block_length=settings.block_length,
                    dllm_denoising_steps=settings.resolved_denoising_steps(),
                    dllm_confidence_threshold=threshold)
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    kwargs.update(focus_fields(arm))
    return kwargs


def focus_options(arm: str):
    """The arm's resolved ``FocusOptions`` (FOCUS implies delayed cache, shadow implies FOCUS)."""
    from lmdeploy_focus.config.options import FocusOptions
    return FocusOptions.from_fields(focus_fields(arm)).resolved()
