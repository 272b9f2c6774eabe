"""The FOCUS option set, shared by the Python API, the CLI and the engine process.

Options travel from the front end to the engine process inside ``hf_overrides[OPTIONS_KEY]`` (an
official, pickle-safe LMDeploy channel that lands in ``ModelConfig.hf_config`` where both the model
and the strategy factory can read it).
"""
import math
from dataclasses import asdict, dataclass, fields, replace

OPTIONS_KEY = 'dllm_focus'
DEFAULT_FOCUS_ALPHA = 1.5
# How a fully decoded block becomes history: 'exact' recomputes the whole block once (history KV
# is never stale, one extra block pass per block); 'fast' processes only its still-uncached
# positions (the reference fork). Default 'exact' until the quality evaluation says otherwise.
COMMIT_MODES = ('exact', 'fast')
DEFAULT_COMMIT_MODE = 'exact'
# Which masked tokens FOCUS keeps: 'importance' (the paper: importance delta between layers 0 and 1)
# or 'leftmost' (the leftmost T masked tokens: a deterministic frontier policy for ablations and
# for measuring cost on random weights, where attention carries no signal).
FOCUS_POLICIES = ('importance', 'leftmost')
DEFAULT_FOCUS_POLICY = 'importance'


@dataclass(frozen=True)
class FocusOptions:
    """Engine-side view of the FOCUS flags (field names without the ``dllm_`` prefix)."""
    enable_delayed_cache: bool = False
    enable_focus: bool = False
    focus_alpha: float = DEFAULT_FOCUS_ALPHA
    track: bool = False
    delayed_cache_commit: str = DEFAULT_COMMIT_MODE
    focus_policy: str = DEFAULT_FOCUS_POLICY
    # Compute the FOCUS selection but evict nothing; record whether decoded tokens were selected.
    focus_shadow: bool = False

    def __post_init__(self):
        for name in ('enable_delayed_cache', 'enable_focus', 'track', 'focus_shadow'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'dllm_{name} must be a bool, got {getattr(self, name)!r}')
        alpha = self.focus_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f'dllm_focus_alpha must be a finite number >= 1.0, got {alpha!r}')
        if alpha < 1.0:
            raise ValueError(f'dllm_focus_alpha must be >= 1.0 (it scales the expected number of decodable '
                             f'tokens per step), got {alpha}')
        object.__setattr__(self, 'focus_alpha', float(alpha))
        if self.delayed_cache_commit not in COMMIT_MODES:
            raise ValueError(
                f'dllm_delayed_cache_commit must be one of {COMMIT_MODES}, got {self.delayed_cache_commit!r}')
        if self.focus_policy not in FOCUS_POLICIES:
            raise ValueError(f'dllm_focus_policy must be one of {FOCUS_POLICIES}, got {self.focus_policy!r}')

    @classmethod
    def from_dict(cls, data: dict) -> 'FocusOptions':
        if not isinstance(data, dict):
            raise ValueError(f'hf_overrides[{OPTIONS_KEY!r}] must be a dict, got {type(data).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown FOCUS option(s) {unknown} in hf_overrides[{OPTIONS_KEY!r}]; '
                             f'known: {sorted(known)}')
        return cls(**data)

    @classmethod
    def from_hf_config(cls, hf_config) -> 'FocusOptions':
        """Read the options the front end put into ``hf_overrides`` (defaults when absent)."""
        data = getattr(hf_config, OPTIONS_KEY, None)
        if data is None:
            return cls()
        if not isinstance(data, dict):  # transformers may wrap nested dicts
            data = dict(vars(data)) if hasattr(data, '__dict__') else dict(data)
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self) -> 'FocusOptions':
        """Shadow mode is FOCUS without eviction; FOCUS selects from the delayed-cache processing
        set, so it implies delayed cache."""
        options = self
        if options.focus_shadow and not options.enable_focus:
            options = replace(options, enable_focus=True)
        if options.enable_focus and not options.enable_delayed_cache:
            options = replace(options, enable_delayed_cache=True)
        return options

    @property
    def is_default(self) -> bool:
        return self == FocusOptions()

    @property
    def uses_sparse_decode(self) -> bool:
        """Delayed cache (and hence FOCUS) changes the decode step; ``track`` alone does not."""
        return self.enable_delayed_cache or self.enable_focus
