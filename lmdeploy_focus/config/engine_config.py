"""``lmdeploy.PytorchEngineConfig`` with the FOCUS fields of the reference fork.

Installed as ``lmdeploy.messages.PytorchEngineConfig`` by :mod:`lmdeploy_focus.patch.engine_config`.
The FOCUS fields are carried to the engine process in ``hf_overrides['dllm_focus']``: the
``hf_overrides`` attribute is a property that merges the user's overrides with the current FOCUS
options, so the engine always sees what the fields say, also when a caller sets them after
construction (as ``lmdeploy chat``'s ``build_pipe`` does) or pickles / deep-copies the config.
"""
import logging
from dataclasses import fields

from lmdeploy.messages import PytorchEngineConfig as _UpstreamPytorchEngineConfig

from ..log import log_once
from .compat import (check_block_length, check_engine_settings, check_prefill_holds_a_block, check_unmasking_settings,
                     check_unmasking_strategy)
from .patch_state import patch_failures
from .options import OPTIONS, OPTIONS_KEY, FocusOptions, option_fields, options_doc

# engine-config field name -> FocusOptions field name (both from the one option table)
_FIELD_TO_OPTION = {option.field: option.name for option in OPTIONS}


class _FieldOptions(dict):
    """``hf_overrides['dllm_focus']`` as the property hands it out: the config's own fields, not options a user
    wrote. A config built from it (``dataclasses.replace``, ``PytorchEngineConfig(**asdict(c))``) takes its FOCUS
    options from its fields, so ``replace(c, dllm_focus_alpha=3.0)`` changes α instead of conflicting with it."""


@option_fields(prefix='dllm_')
class PytorchEngineConfig(_UpstreamPytorchEngineConfig):
    """PyTorch engine config with FOCUS: one ``dllm_*`` field per row of ``config.options.OPTIONS``."""

    def __post_init__(self):
        super().__post_init__()
        self._adopt_carried_options()
        self.check_fields()
        # the fields stay as given; focus_options() resolves what they imply. Writing the implied switches into the
        # fields made dataclasses.replace(shadow, dllm_focus_shadow=False) run eviction and
        # replace(focus, dllm_enable_focus=False) run delayed cache: the implied values came back as given ones.
        # Logged once per process: pipelines, benchmarks and chat rebuild configs many times.
        if self.dllm_focus_shadow and not self.dllm_enable_focus:
            log_once('dllm_focus_shadow=True enables dllm_enable_focus (selection without eviction).')
        if (self.dllm_enable_focus or self.dllm_focus_shadow) and not self.dllm_enable_delayed_cache:
            log_once('dllm_enable_focus=True enables dllm_enable_delayed_cache.')
        self.focus_options()
        self.__dict__['_built'] = True  # from now on hf_overrides set by a caller is adopted at once (the setter)

    def check_fields(self) -> None:
        """The DLLM fields' own checks, stock decoding too (ValueError naming the field); again by ``lmdeploy chat``,
        whose ``build_pipe`` sets the flags on a config already built."""
        if self.dllm_block_length is not None:  # None: from the model (path suffix, model default)
            check_block_length(self.dllm_block_length)
            check_prefill_holds_a_block(self.max_prefill_token_num, self.dllm_block_length)
        check_unmasking_settings(self.dllm_denoising_steps, self.dllm_confidence_threshold)
        check_unmasking_strategy(self.dllm_unmasking_strategy)

    def focus_options(self) -> FocusOptions:
        """The validated FOCUS options for the engine, implications resolved (shadow turns FOCUS on, FOCUS delayed
        cache): what the engine runs, where a field reads as given; raises ValueError on a bad combination."""
        options = FocusOptions.from_fields(vars(self)).resolved()
        if (options.enable_focus and not options.focus_shadow and options.focus_policy == 'importance'
                and str(self.dllm_unmasking_strategy).lower() == 'sequential'):
            # importance may evict the leftmost masked slots, and the unmasker, which sees evicted slots as done,
            # would then decode to their right: out of the order sequential unmasking is for
            raise ValueError('dllm_focus_policy importance does not keep the slots sequential unmasking decodes next '
                             '(the leftmost masked ones): use --dllm-focus-policy leftmost with '
                             '--dllm-unmasking-strategy sequential')
        if options.uses_sparse_decode:
            failures = patch_failures()
            if failures:
                raise RuntimeError(f'dllm_enable_delayed_cache / dllm_enable_focus cannot run: lmdeploy-focus failed to '
                                   f'patch {", ".join(f"{k} ({v})" for k, v in failures.items())}, so the engine would '
                                   f'be partly stock. Reinstall lmdeploy==0.18.0 and lmdeploy-focus.')
            check_engine_settings(quant_policy=self.quant_policy,
                                  tp=self.tp,
                                  dp=self.dp,
                                  ep=self.ep,
                                  block_size=self.block_size,
                                  dllm_block_length=self.dllm_block_length,
                                  device_type=self.device_type,
                                  enable_prefix_caching=self.enable_prefix_caching,
                                  delayed_cache_commit=options.delayed_cache_commit,
                                  focus=options.enable_focus)
        return options

    def _adopt_carried_options(self):
        """Take options a caller wrote as ``hf_overrides['dllm_focus']`` (CLI, --hf-overrides, the Python API); a
        config's own, handed back by ``replace()`` / ``asdict()``, is left to the fields given with it."""
        user = self.__dict__.get('_user_hf_overrides')
        if not user or OPTIONS_KEY not in user:
            return
        if isinstance(user[OPTIONS_KEY], _FieldOptions):  # another config's fields, handed back: the fields decide
            self.__dict__['_user_hf_overrides'] = {k: v for k, v in user.items() if k != OPTIONS_KEY} or None
            own = FocusOptions.from_fields(vars(self)).resolved()
            if own.is_default:
                # PytorchEngineConfig(hf_overrides=other.hf_overrides) (FOCUS off, likely not meant) and
                # dataclasses.replace(other, dllm_enable_focus=False) (meant) look the same from here: the warning
                # must read true for both
                log_once(f"hf_overrides[{OPTIONS_KEY!r}] taken from another engine config is not used: this config's "
                         "dllm_* fields decide, and they leave FOCUS off (to carry FOCUS over, pass the other "
                         "config's dllm_* fields too)", level=logging.WARNING)
            return
        carried = FocusOptions.from_dict(user[OPTIONS_KEY])
        defaults = {f.name: f.default for f in fields(self) if f.name in _FIELD_TO_OPTION}
        for name, opt in _FIELD_TO_OPTION.items():
            if opt not in user[OPTIONS_KEY]:  # not given there: the field keeps its own value
                continue
            given, value = getattr(self, name), getattr(carried, opt)
            if given == defaults[name]:
                setattr(self, name, value)
            elif given != value:
                raise ValueError(f'{name}={given!r} conflicts with hf_overrides[{OPTIONS_KEY!r}][{opt!r}]={value!r}')
        self.hf_overrides = {k: v for k, v in user.items() if k != OPTIONS_KEY} or None

    @property
    def hf_overrides(self):
        user = self.__dict__.get('_user_hf_overrides')
        options = self.focus_options()
        if options.is_default:
            return user
        return {**(user or {}), OPTIONS_KEY: _FieldOptions(options.to_dict())}

    @hf_overrides.setter
    def hf_overrides(self, value):
        if not self.__dict__.get('_built'):  # the constructor: __post_init__ adopts and checks
            self.__dict__['_user_hf_overrides'] = value
            return
        # set after construction: the same merge and checks as in the constructor; a refused value changes nothing
        before = self.__dict__.get('_user_hf_overrides'), {name: getattr(self, name) for name in _FIELD_TO_OPTION}
        self.__dict__['_user_hf_overrides'] = value
        try:
            self._adopt_carried_options()
            self.focus_options()
        except Exception:
            self.__dict__['_user_hf_overrides'] = before[0]
            for name, field_value in before[1].items():
                setattr(self, name, field_value)
            raise

    def __reduce__(self):
        return _unpickled_config, (dict(self.__dict__), )


def _unpickled_config(state: dict) -> PytorchEngineConfig:
    """A FOCUS engine config in the process that unpickles it (upstream's engine checker pool on CUDA, the engine
    process of ``enable_mp_engine``, executor workers), with the plugin active there: a process started without the
    plugin's .pth (``lmdeploy_focus.activate()`` in a source checkout) ran upstream's checks with stock model-config
    builders, which refused LLaDA2. A no-op where the .pth already activated it (and for ``copy.copy`` /
    ``copy.deepcopy``, which rebuild through it too, in a process where the plugin is active or disabled)."""
    from .._bootstrap import install
    install()
    config = object.__new__(PytorchEngineConfig)
    config.__dict__.update(state)
    return config


PytorchEngineConfig.__doc__ += '\n\n    Additional args:\n' + options_doc(prefix='dllm_')
