"""Patch 19: upstream's DLLM batch cap (max_batch_size · L <= max_prefill_token_num) also when the block length
comes from the model (found by a bug-hunting review: the README's own serve command kept max_batch_size 1024 at
block 32)."""
import importlib
import inspect

import pytest
from conftest import qwen3_like_config, write_hf_config

from lmdeploy_focus.config.dllm_batch_cap import cap_batch_for_block_length, model_block_length


def _config(**fields):
    from lmdeploy.messages import PytorchEngineConfig
    return PytorchEngineConfig(**{'max_batch_size': 1024, 'max_prefill_token_num': 8192, **fields})


@pytest.mark.parametrize('name, model_type, block_length', [
    ('SDAR-tiny-b32', 'sdar', 32),
    ('SDAR-moe-tiny-b64', 'sdar_moe', 64),
    ('LLaDA2-tiny', 'llada2_moe', 32),  # LLaDA2's default
    ('Qwen3-tiny-b32', 'qwen3', None),  # an autoregressive model: no block length, no cap
    ('SDAR-tiny', 'sdar', None),  # no -b<N>: upstream's default 4 (8192 // 4 > 1024)
])
def test_the_model_block_length_caps_the_batch_as_an_explicit_one(tmp_path, name, model_type, block_length):
    model = write_hf_config(tmp_path / name, **qwen3_like_config(model_type=model_type))
    assert model_block_length(model) == block_length
    config = _config(cudagraph_capture_batch_sizes=[1, 2, 4, 128, 512, 1024])
    cap_batch_for_block_length(model, config)
    expected = 1024 if block_length is None else 8192 // block_length
    assert config.max_batch_size == expected
    assert max(config.cudagraph_capture_batch_sizes) <= expected  # upstream's normalisation for the new size


def test_a_configured_block_length_or_a_small_batch_is_left_to_upstream(tmp_path):
    model = write_hf_config(tmp_path / 'SDAR-tiny-b32', **qwen3_like_config(model_type='sdar'))
    config = _config(dllm_block_length=16)  # upstream's update_engine_config applies its own cap with it
    cap_batch_for_block_length(model, config)
    assert config.max_batch_size == 1024
    config = _config(max_batch_size=64)
    cap_batch_for_block_length(model, config)
    assert config.max_batch_size == 64
    cap_batch_for_block_length(str(tmp_path / 'missing'), config)  # not a local checkpoint: nothing to read
    assert config.max_batch_size == 64


def test_the_engine_checker_caps_the_config_the_engine_goes_on_with(tmp_path):
    """What Engine.__init__ does: update_engine_config, then the checker on the same config object."""
    from lmdeploy.pytorch.engine.config_builder import ConfigBuilder
    engine_module = importlib.import_module('lmdeploy.pytorch.engine.engine')
    model = write_hf_config(tmp_path / 'SDAR-tiny-b32', **qwen3_like_config(model_type='sdar'))
    config = ConfigBuilder.update_engine_config(_config(device_type='cuda'))
    assert config.max_batch_size == 1024  # upstream's cap does not see the model's block length
    engine_module.EngineChecker(model_path=model, engine_config=config, trust_remote_code=False)
    assert config.max_batch_size == 256  # = what --dllm-block-length 32 gets from upstream
    explicit = ConfigBuilder.update_engine_config(_config(dllm_block_length=32))
    assert explicit.max_batch_size == config.max_batch_size


def test_engine_init_checks_before_it_builds_the_scheduler_and_cache_configs():
    """Contract: the checker is built from the local model path and the updated engine config, and the batch it
    leaves is the one the scheduler and cache configs are built from; upstream's own rule is the one mirrored."""
    engine_module = importlib.import_module('lmdeploy.pytorch.engine.engine')
    source = inspect.getsource(engine_module.Engine.__init__)
    order = [source.index(text) for text in ('ConfigBuilder.update_engine_config(engine_config)', 'get_model(',
                                              'EngineChecker(model_path=model_path', 'engine_config=engine_config',
                                              'build_scheduler_config(engine_config)', 'build_cache_config(engine_config)')]
    assert order == sorted(order)
    from lmdeploy.pytorch.engine.config_builder import ConfigBuilder
    assert 'max_prefill_token_num // engine_config.dllm_block_length' in inspect.getsource(
        ConfigBuilder.update_engine_config)
    assert engine_module.EngineChecker.__lmdeploy_focus_upstream__.__name__ == 'EngineChecker'


def test_the_checker_the_engine_builds_pickles_into_upstreams_check_process(tmp_path):
    """On CUDA upstream runs ``checker._handle_impl`` in a spawned process, so the checker must pickle (a subclass
    built at patch time did not: every engine start failed on the H100 with "Can't pickle local object")."""
    import pickle

    engine_module = importlib.import_module('lmdeploy.pytorch.engine.engine')
    checker_module = importlib.import_module('lmdeploy.pytorch.engine.engine_checker')
    assert 'ProcessPoolExecutor' in inspect.getsource(checker_module.EngineChecker.handle)
    assert "get_context('spawn')" in inspect.getsource(checker_module.EngineChecker.handle)
    assert 'submit(self._handle_impl)' in inspect.getsource(checker_module.EngineChecker.handle)
    model = write_hf_config(tmp_path / 'SDAR-tiny-b32', **qwen3_like_config(model_type='sdar'))
    checker = engine_module.EngineChecker(model_path=model, engine_config=_config(device_type='cuda'),
                                          trust_remote_code=False)
    handle = pickle.loads(pickle.dumps(checker._handle_impl))
    assert type(handle.__self__) is checker_module.EngineChecker
    assert handle.__self__.engine_config.max_batch_size == 256  # the capped config travels with it


def test_a_prefill_budget_below_one_block_is_refused_with_the_fix(tmp_path):
    """Upstream's cap then gave max_batch_size 0: its engine checker ended the process naming max_batch_size (which
    the user set to 8), or with the checks off every request hung (found by a bug-hunting review)."""
    model = write_hf_config(tmp_path / 'SDAR-tiny-b32', **qwen3_like_config(model_type='sdar'))
    with pytest.raises(ValueError, match=r'max_prefill_token_num \(16\) is below the block length \(32\)'):
        cap_batch_for_block_length(model, _config(max_batch_size=8, max_prefill_token_num=16))  # from the model
    with pytest.raises(ValueError, match='--max-prefill-token-num'):
        _config(max_batch_size=8, max_prefill_token_num=16, dllm_block_length=32)  # given
    config = _config(max_batch_size=8, max_prefill_token_num=32)  # one block: a batch of one
    cap_batch_for_block_length(model, config)
    assert config.max_batch_size == 1
