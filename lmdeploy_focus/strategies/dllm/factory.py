"""The DLLM strategy factory the engine and the model agent get once the plugin is active."""
from lmdeploy.pytorch.strategies.dllm import DLLMStrategyFactory

from ...config.compat import check_block_fits_page
from ...config.options import FocusOptions
from ...log import logger


class FocusDLLMStrategyFactory(DLLMStrategyFactory):
    """Reads the FOCUS options from ``hf_config`` and builds the matching strategies.

    With every option off it builds exactly upstream's strategies.
    """

    def __init__(self, model_config, dllm_config):
        given_block_length = dllm_config.block_length
        super().__init__(model_config, dllm_config)
        if given_block_length is None and model_config.dllm_block_length is not None:
            logger.info(f'dllm_block_length not given: using {self.dllm_block_length} from the model config / path.')
        self.focus_options = FocusOptions.from_hf_config(model_config.hf_config).resolved()
        if self.focus_options.uses_sparse_decode:
            raise NotImplementedError(
                'dllm_enable_delayed_cache / dllm_enable_focus: the delayed-cache and FOCUS decode paths are not '
                'implemented in this lmdeploy-focus build yet; run without these flags for stock DLLM decoding.')
        if self.focus_options.track:
            logger.warning('dllm_track: per-request DLLM statistics are not collected by this lmdeploy-focus build '
                           'yet; the flag has no effect.')

    def build_engine_strategy(self, cache_config, scheduler_config):
        if self.focus_options.uses_sparse_decode:
            # The block length may only be known here (model default or path suffix).
            check_block_fits_page(self.dllm_block_length, cache_config.block_size)
        return super().build_engine_strategy(cache_config, scheduler_config)
