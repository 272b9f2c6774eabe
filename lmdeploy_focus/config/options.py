"""The FOCUS option set, shared by the Python API, the CLI and the engine process.

:data:`OPTIONS` is the one table of the options: each row gives the :class:`FocusOptions` field (also
the key inside ``hf_overrides[OPTIONS_KEY]``), and from it the ``PytorchEngineConfig`` field
``dllm_<name>`` (:mod:`.engine_config`), the CLI flag ``--dllm-<name>`` (:mod:`lmdeploy_focus.cli.flags`),
the default, the allowed values and the help text (CLI help and the engine config's docstring).
Validation lives in :meth:`FocusOptions.__post_init__`; every front end goes through it.

Options travel from the front end to the engine process inside ``hf_overrides[OPTIONS_KEY]`` (an
official, pickle-safe LMDeploy channel that lands in ``ModelConfig.hf_config`` where both the model
and the strategy factory can read it).
"""
import math
from dataclasses import asdict, dataclass, fields, replace

OPTIONS_KEY = 'dllm_focus'
DEFAULT_FOCUS_ALPHA = 1.5
# --dllm-focus-alpha auto: the α controller (strategies/dllm/alpha_controller.py) sets α from shadow steps
AUTO_ALPHA = 'auto'
# auto: each sequence runs one decode step in this many in shadow mode. A shadow step sends every processed
# row through the deep layers: on the H100 suite's counters (SDAR-8B b32, importance, bs 256) that is 1.41x
# a FOCUS step's row-layers, so the overhead is about 0.41 / N: 5 % at 8, 2.6 % at 16 (the bar is <= 3 %).
# Measured at 16 in two runs (H100, random SDAR-8B b32, graphs; benchmark/results/2026-12-05_h100_auto_alpha/):
# 2.4-3.0 % at bs 64, 1.9-2.0 % at bs 256, +3 % rows per generated token; at 32: 1.8 % / 1.2 %.
DEFAULT_AUTO_SHADOW_EVERY = 16
# the shadow schedule counts down in int64 device tensors; more steps than any generation has means no shadow step
MAX_AUTO_SHADOW_EVERY = 1 << 20
# auto: the controller's target and bounds (strategies/dllm/alpha_controller.py says what each does)
DEFAULT_AUTO_TARGET_RECALL = 0.95
DEFAULT_AUTO_ALPHA_MAX = 4.0
DEFAULT_AUTO_MARGIN = 0.05
AUTO_RECOVER_HYSTERESIS = 0.05  # a fallen-back controller evicts again once the lift reaches margin + this
# How a fully decoded block becomes history: 'exact' recomputes the whole block once (history KV
# is never stale, one extra block pass per block); 'fast' processes only its still-uncached
# positions (the reference fork). Default 'exact' (quality evaluation, README's flag table).
COMMIT_MODES = ('exact', 'fast')
DEFAULT_COMMIT_MODE = 'exact'
# Which masked tokens FOCUS keeps: 'importance' (the paper: importance delta between layers 0 and 1)
# or 'leftmost' (the leftmost T masked tokens: a deterministic frontier policy for ablations and
# for measuring cost on random weights, where attention carries no signal). The one list of policy
# names: the kernels, the CLI, the benchmarks and the reference loop read it from here.
FOCUS_POLICIES = ('importance', 'leftmost')
DEFAULT_FOCUS_POLICY = 'importance'
# Decode steps of at most this many block rows (batch x block length) run as stock steps: there a step's GEMMs read
# their weights whatever the row count and the host paces the step, so delayed cache / FOCUS save no time and their
# bookkeeping costs some. H100, random weights, static 4 tok/step, b32, FOCUS importance against stock: bs 1 (32 rows)
# 0.94x SDAR-8B, 0.81x SDAR-MoE, TPOT +7.5 % LLaDA2.0-mini; bs 4 (128 rows) 0.98x, 1.09x, 1.02x (BENCHMARKS.md "Stock
# steps at small batches"). Under CUDA graphs applied per upstream capture size, the largest whose rows fit being the
# biggest stock batch (64 rows with the default sizes: bs <= 2 at b32, <= 4 at b16, 1 at b64; runtime.stock_batch).
DEFAULT_STOCK_STEP_ROWS = 64
MAX_STOCK_STEP_ROWS = 1 << 20


@dataclass(frozen=True)
class Option:
    """One FOCUS option. ``name``: the :class:`FocusOptions` field and ``hf_overrides`` key."""
    name: str
    default: bool | float | str
    help: str
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()  # more CLI flags

    @property
    def field(self) -> str:
        """The ``PytorchEngineConfig`` field and argparse ``dest``."""
        return f'dllm_{self.name}'

    @property
    def flag(self) -> str:
        return '--' + self.field.replace('_', '-')

    @property
    def is_switch(self) -> bool:
        return isinstance(self.default, bool)


OPTIONS = (
    Option('enable_delayed_cache', False,
           'Each denoising step processes only the block positions whose KV is not yet stable'),
    Option('enable_focus', False,
           'FOCUS: evict masked tokens unlikely to be decoded after layer 1 (implies --dllm-enable-delayed-cache)',
           aliases=('--focus', )),
    Option('focus_alpha', DEFAULT_FOCUS_ALPHA,
           'FOCUS safety margin (>= 1.0) over the expected number of decodable tokens per step, or "auto" (set online)'),
    Option('track', False, 'Collect per-request DLLM statistics (processed tokens, denoising steps); the api_server '
           'turns it on with delayed cache / FOCUS while its metrics are on'),
    Option('delayed_cache_commit', DEFAULT_COMMIT_MODE,
           'How a decoded block becomes history under delayed cache: exact = one full pass over the block '
           '(history KV never stale), fast = only its uncached positions',
           choices=COMMIT_MODES),
    Option('focus_policy', DEFAULT_FOCUS_POLICY,
           'Which masked tokens FOCUS keeps: importance (delta between layers 0 and 1, the paper) or leftmost '
           '(the leftmost ones; ablations and cost measurements)',
           choices=FOCUS_POLICIES),
    Option('focus_shadow', False,
           'Compute the FOCUS selection without evicting; with --dllm-track, report how many decoded tokens had '
           'been selected (implies --dllm-enable-focus)'),
    Option('stock_step_rows', DEFAULT_STOCK_STEP_ROWS,
           'With delayed cache / FOCUS: decode batches of at most this many block rows (batch x block length; with '
           'CUDA graphs rounded down to a capture batch size) run stock decode steps, where the step is paced by the '
           'host and the weight reads and eviction would save nothing; 0 = every decode step runs delayed cache / '
           'FOCUS'),
    Option('focus_auto_shadow_every', DEFAULT_AUTO_SHADOW_EVERY,
           'With --dllm-focus-alpha auto: each sequence runs one decode step in N in shadow mode (N >= 1; '
           'at 16 about 3 percent of the throughput on SDAR-8B; a larger N costs less and adapts slower)'),
    Option('focus_auto_target_recall', DEFAULT_AUTO_TARGET_RECALL,
           'With --dllm-focus-alpha auto: the share of the decoded tokens the kept set must contain (0 < r <= 1); '
           'alpha rises until the shadow steps measure it'),
    Option('focus_auto_alpha_max', DEFAULT_AUTO_ALPHA_MAX,
           'With --dllm-focus-alpha auto: the largest alpha the controller may use (> 1); where the target needs '
           'more, FOCUS stops evicting'),
    Option('focus_auto_margin', DEFAULT_AUTO_MARGIN,
           'With --dllm-focus-alpha auto: FOCUS stops evicting while the selection\'s recall is within this of a '
           f'random subset\'s of the same size (0 <= m < 0.5), and evicts again once it leads by '
           f'm + {AUTO_RECOVER_HYSTERESIS}'),
)


def option_fields(prefix: str = '', **dataclass_kwargs):
    """Class decorator: one field per :data:`OPTIONS` row (``prefix + name``, its default), then ``@dataclass``."""

    def decorate(cls):
        annotations = dict(cls.__dict__.get('__annotations__', {}))
        for option in OPTIONS:
            annotations[prefix + option.name] = type(option.default)
            setattr(cls, prefix + option.name, option.default)
        cls.__annotations__ = annotations
        return dataclass(cls, **dataclass_kwargs)

    return decorate


def options_doc(prefix: str = '') -> str:
    """The options as a docstring ``Args`` section (``prefix + name: help``)."""
    return '\n'.join(f'        {prefix}{o.name}: {o.help} (default {o.default!r}).' for o in OPTIONS)


# α scales a count of tokens in fp32 (ceil(avg * α)); α >= the block length already keeps every token, and a
# huge α would overflow the product (1e39 is not a float32). 10,000 is far above any block length.
MAX_FOCUS_ALPHA = 10_000.0


@option_fields(frozen=True)
class FocusOptions:
    """Engine-side view of the FOCUS flags: one field per :data:`OPTIONS` row (names without ``dllm_``)."""

    def __post_init__(self):
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.is_switch and not isinstance(value, bool):
                raise ValueError(f'{option.field} must be a bool, got {value!r}')
            if option.choices is not None and value not in option.choices:
                raise ValueError(f'{option.field} must be one of {option.choices}, got {value!r}')
        rows = self.stock_step_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 <= rows <= MAX_STOCK_STEP_ROWS:
            raise ValueError(f'dllm_stock_step_rows must be an integer in [0, {MAX_STOCK_STEP_ROWS}] (0: no stock '
                             f'steps), got {rows!r}')
        every = self.focus_auto_shadow_every
        if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= MAX_AUTO_SHADOW_EVERY:
            raise ValueError(f'dllm_focus_auto_shadow_every must be an integer >= 1 and at most '
                             f'{MAX_AUTO_SHADOW_EVERY} (one shadow step in N decode steps), got {every!r}')
        self._check_number('focus_auto_target_recall', lambda r: 0.0 < r <= 1.0, 'in (0, 1]')
        # > 1: at alpha_max == 1 the controller could never qualify the selection (it needs the target below α_max)
        self._check_number('focus_auto_alpha_max', lambda a: 1.0 < a <= MAX_FOCUS_ALPHA, f'in (1, {MAX_FOCUS_ALPHA:g}]')
        self._check_number('focus_auto_margin', lambda m: 0.0 <= m < 0.5, 'in [0, 0.5)')
        alpha = self.focus_alpha
        if alpha == AUTO_ALPHA and self.focus_shadow:
            # shadow mode evicts nothing, so auto has nothing to tune; its one-in-N shadow steps replaced shadow
            # mode's every-step recall counts and its fall-back counter grew in a mode that never evicts
            raise ValueError('dllm_focus_shadow evicts nothing, so dllm_focus_alpha auto has nothing to tune: give '
                             'shadow mode a number (--dllm-focus-alpha 1.5) or drop --dllm-focus-shadow')
        if alpha == AUTO_ALPHA:
            return
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f'dllm_focus_alpha must be a finite number >= 1.0 or {AUTO_ALPHA!r}, got {alpha!r}')
        if alpha < 1.0:
            raise ValueError(f'dllm_focus_alpha must be >= 1.0 (it scales the expected number of decodable '
                             f'tokens per step), got {alpha}')
        if alpha > MAX_FOCUS_ALPHA:
            raise ValueError(f'dllm_focus_alpha must be <= {MAX_FOCUS_ALPHA:g}, got {alpha}: an alpha of the block '
                             f'length or more already keeps every token (e.g. --dllm-focus-alpha 32 at block 32)')
        object.__setattr__(self, 'focus_alpha', float(alpha))

    def _check_number(self, name: str, ok, rule: str) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f'dllm_{name} must be a number {rule}, got {value!r}')
        object.__setattr__(self, name, float(value))

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
    def from_fields(cls, values) -> 'FocusOptions':
        """The options from a mapping keyed by engine-config field names (``dllm_focus_alpha``, ...): an engine
        config's or parsed arguments' ``vars()``, a kwargs dict; other keys are ignored, missing options default."""
        return cls(**{option.name: values.get(option.field, option.default) for option in OPTIONS})

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
    def auto_alpha(self) -> bool:
        return self.focus_alpha == AUTO_ALPHA

    def ignored(self) -> list[str]:
        """Flags of the options set away from their defaults that this (resolved) combination never reads, each
        with what it needs: accepted (a config may keep them while a switch is off), but worth a warning."""
        needs = {}
        if not self.enable_focus:
            needs.update((name, '--focus') for name in ('focus_alpha', 'focus_policy'))
        if not self.enable_delayed_cache:
            needs['delayed_cache_commit'] = needs['stock_step_rows'] = '--dllm-enable-delayed-cache or --focus'
        if not (self.enable_focus and self.auto_alpha):
            needs.update((o.name, '--focus --dllm-focus-alpha auto') for o in OPTIONS if o.name.startswith('focus_auto_'))
        return [f'{o.flag} (needs {needs[o.name]})' for o in OPTIONS
                if o.name in needs and getattr(self, o.name) != o.default]

    @property
    def is_default(self) -> bool:
        return self == FocusOptions()

    @property
    def uses_sparse_decode(self) -> bool:
        """Delayed cache (and hence FOCUS) changes the decode step; ``track`` alone does not."""
        return self.enable_delayed_cache or self.enable_focus
