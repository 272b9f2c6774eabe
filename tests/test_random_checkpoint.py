"""Random-weight checkpoints: HF on-disk format, real names/shapes, loadable by upstream LMDeploy."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from lmdeploy_focus_dev.tools.arch_specs import get_arch_spec
from lmdeploy_focus_dev.tools.hf_config_files import config_json
from lmdeploy_focus_dev.tools.random_checkpoint import main, write_metadata_files, write_random_checkpoint
from lmdeploy_focus_dev.tools.safetensors_shards import index_json, plan_shards
from lmdeploy_focus_dev.tools.weight_layouts import parameter_count, tensor_specs

TINY = 'tiny-sdar'


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_checkpoint(TINY, tmp_path_factory.mktemp('tiny') / 'tiny-sdar-b4', seed=0, device='cpu')


def _read_index(path: Path) -> dict:
    return json.loads((path / 'model.safetensors.index.json').read_text())


def _load_all(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(path.glob('*.safetensors')):
        with safe_open(str(shard), framework='pt') as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def test_config_fields(tiny_dir):
    config = json.loads((tiny_dir / 'config.json').read_text())
    assert config['architectures'] == ['SDARForCausalLM'] and config['model_type'] == 'sdar'
    assert config['auto_map'] == {'AutoConfig': 'configuration_sdar.SDARConfig',
                                  'AutoModelForCausalLM': 'modeling_sdar.SDARForCausalLM'}
    assert (tiny_dir / 'configuration_sdar.py').is_file() and not list(tiny_dir.glob('modeling_*'))
    assert config['rope_parameters'] == {'rope_type': 'default', 'rope_theta': 1e6}
    assert config['mask_token_id'] == 151669 and config['vocab_size'] == 151936
    assert config['torch_dtype'] == 'bfloat16' and config['tie_word_embeddings'] is False
    assert (config['hidden_size'], config['num_hidden_layers'], config['head_dim']) == (64, 2, 16)
    generation = json.loads((tiny_dir / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == [151645, 151643]


def test_index_covers_exactly_the_shards(tiny_dir):
    index = _read_index(tiny_dir)
    files = sorted(p.name for p in tiny_dir.glob('*.safetensors'))
    assert files == [f'model-0000{i}-of-00003.safetensors' for i in (1, 2, 3)]
    assert sorted(set(index['weight_map'].values())) == files
    total = 0
    for name in files:
        with safe_open(str(tiny_dir / name), framework='pt') as f:
            keys = set(f.keys())
            assert keys == {k for k, v in index['weight_map'].items() if v == name}
            total += sum(f.get_tensor(k).nbytes for k in keys)
    assert index['metadata']['total_size'] == total == 2 * parameter_count(get_arch_spec(TINY))


def test_tensors_match_the_spec(tiny_dir):
    tensors = _load_all(tiny_dir)
    specs = tensor_specs(get_arch_spec(TINY))
    assert {t.name: t.shape for t in specs} == {k: tuple(v.shape) for k, v in tensors.items()}
    for spec in specs:
        value = tensors[spec.name]
        assert value.dtype == torch.bfloat16
        if spec.init == 'ones':
            assert torch.all(value == 1)
        else:
            assert abs(value.float().std().item() - 0.02) < 2e-3 and abs(value.float().mean().item()) < 2e-3


class _NoOpBackend:
    """Upstream builds kernels through the ops backend; parameter creation needs none of them."""

    @classmethod
    def build_op(cls, *args, **kwargs):
        return object()


def _load_into_upstream(checkpoint: Path, module: str, class_name: str, monkeypatch):
    """The checkpoint loaded into upstream's model class (parameters NaN first); ``(parameters, tensors)``. Fails if a
    tensor has no parameter (upstream's loader raises KeyError) or a parameter is left unfilled."""
    import importlib
    from lmdeploy.pytorch.backends import selector
    from transformers import AutoConfig
    monkeypatch.setattr(selector, '_get_backend', lambda: _NoOpBackend)
    model_class = getattr(importlib.import_module(module), class_name)

    hf_config = AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=True)
    build_ctx = SimpleNamespace(build_ctx=SimpleNamespace(dllm_config=SimpleNamespace(block_length=4)))
    model = model_class(hf_config, build_ctx, dtype=torch.bfloat16, device='cpu')
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float('nan'))
    weights = _load_all(checkpoint)
    model.load_weights(iter(weights.items()))
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert not torch.isnan(param).any(), f'{name} was not loaded'
    return params, weights


def test_names_load_into_upstream_sdar_model(tiny_dir, monkeypatch):
    params, weights = _load_into_upstream(tiny_dir, 'lmdeploy.pytorch.models.sdar', 'SDARForCausalLM', monkeypatch)
    attn = 'model.layers.1.self_attn'
    assert torch.equal(params[f'{attn}.qkv_proj.weight'],
                       torch.cat([weights[f'{attn}.{p}_proj.weight'] for p in 'qkv']))
    mlp = 'model.layers.1.mlp'
    assert torch.equal(params[f'{mlp}.gate_up_proj.weight'],
                       torch.cat([weights[f'{mlp}.gate_proj.weight'], weights[f'{mlp}.up_proj.weight']]))


def test_same_seed_same_bytes_other_seed_differs(tiny_dir, tmp_path):
    main(['--arch', TINY, str(tmp_path / 'again'), '--seed', '0', '--device', 'cpu'])
    for shard in sorted(tiny_dir.glob('*.safetensors')):
        assert (tmp_path / 'again' / shard.name).read_bytes() == shard.read_bytes()
    other = write_random_checkpoint(TINY, tmp_path / 'other', seed=1, device='cpu')
    a, b = _load_all(tiny_dir), _load_all(other)
    assert not torch.equal(a['model.embed_tokens.weight'], b['model.embed_tokens.weight'])
    assert torch.equal(a['model.norm.weight'], b['model.norm.weight'])
    with pytest.raises(FileExistsError, match=r'already holds weights .*: pass overwrite=True to replace them'):
        write_random_checkpoint(TINY, other, seed=2, device='cpu')


def test_lmdeploy_model_config(tiny_dir, monkeypatch):
    import lmdeploy.pytorch.config as lmdeploy_config
    # upstream asks CUDA whether bf16 is supported; this CPU-only torch cannot answer
    monkeypatch.setattr(lmdeploy_config, 'is_bf16_supported', lambda *args, **kwargs: True)
    model_config = lmdeploy_config.ModelConfig.from_pretrained(str(tiny_dir), trust_remote_code=True)
    assert model_config.model_paradigm == 'dllm'
    assert model_config.dllm_mask_token == 151669
    assert (model_config.head_dim, model_config.num_layers, model_config.num_key_value_heads) == (16, 2, 2)
    assert model_config.dtype == torch.bfloat16


def test_autotokenizer_loads_checkpoint(tiny_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    assert tok.convert_tokens_to_ids('<|MASK|>') == 151669
    assert max(tok.encode('hello <|MASK|> world')) < get_arch_spec(TINY).vocab_size


def test_big_arch_parameter_counts():
    assert parameter_count(get_arch_spec('sdar-8b')) == pytest.approx(8.19e9, rel=2e-3)
    assert parameter_count(get_arch_spec('qwen3-8b')) == parameter_count(get_arch_spec('sdar-8b'))
    assert parameter_count(get_arch_spec('sdar-4b')) * 2 == pytest.approx(8.82e9, rel=2e-3)
    assert parameter_count(get_arch_spec('llada2-mini')) == pytest.approx(16.26e9, rel=2e-3)


def test_big_arch_shard_plans():
    spec = get_arch_spec('sdar-8b')
    shards = plan_shards(tensor_specs(spec), torch.bfloat16, spec.max_shard_bytes)
    assert [s.file_name for s in shards] == [f'model-0000{i}-of-00005.safetensors' for i in range(1, 6)]
    assert all(s.nbytes <= spec.max_shard_bytes for s in shards)
    assert min(s.nbytes for s in shards[:-1]) > 3e9
    index = index_json(shards)
    assert index['metadata']['total_size'] == 2 * parameter_count(spec)
    assert len(index['weight_map']) == 2 + 36 * 11 + 1

    spec = get_arch_spec('llada2-mini')
    names = {t.name: t for t in tensor_specs(spec)}
    assert names['model.layers.0.mlp.gate_proj.weight'].shape == (5120, 2048)
    assert 'model.layers.0.mlp.gate.weight' not in names
    assert names['model.layers.1.attention.query_key_value.weight'].shape == ((16 + 2 * 4) * 128, 2048)
    assert names['model.layers.19.mlp.experts.255.down_proj.weight'].shape == (2048, 512)
    assert names['model.layers.1.mlp.shared_experts.up_proj.weight'].shape == (512, 2048)
    bias = names['model.layers.1.mlp.gate.expert_bias']
    assert (bias.shape, bias.init, bias.dtype) == ((256, ), 'zeros', 'float32')
    shards = plan_shards(list(names.values()), torch.bfloat16, spec.max_shard_bytes)
    assert len(shards) == 9 and index_json(shards)['metadata']['total_size'] > 2 * parameter_count(spec)


def test_other_arch_configs(tmp_path):
    from transformers import AutoConfig
    qwen3 = config_json(get_arch_spec('qwen3-8b'))
    assert qwen3['architectures'] == ['Qwen3ForCausalLM'] and qwen3['model_type'] == 'qwen3'
    assert 'auto_map' not in qwen3 and 'mask_token_id' not in qwen3 and qwen3['eos_token_id'] == 151645

    write_metadata_files(get_arch_spec('llada2-mini'), tmp_path)
    llada2 = AutoConfig.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert llada2.model_type == 'llada2_moe' and llada2.architectures == ['LLaDA2MoeModelLM']
    assert (llada2.num_experts, llada2.num_experts_per_tok, llada2.num_shared_experts) == (256, 8, 1)
    assert (llada2.n_group, llada2.topk_group, llada2.first_k_dense_replace) == (8, 4, 1)
    assert (llada2.mask_token_id, llada2.eos_token_id, llada2.pad_token_id) == (156895, 156892, 156892)
    assert llada2.score_function == 'sigmoid' and llada2.routed_scaling_factor == 2.5
    assert llada2.partial_rotary_factor == 0.5 and llada2.rope_theta == 600000
    assert 'not this model' in (tmp_path / 'README.md').read_text()


def test_llada2_config_goes_through_lmdeploy(tmp_path, monkeypatch):
    """The engine's config path on a LLaDA2.0-mini checkpoint's metadata (remote-code config, no BOS id)."""
    import lmdeploy.pytorch.config as lmdeploy_config
    monkeypatch.setattr(lmdeploy_config, 'is_bf16_supported', lambda *args, **kwargs: True)
    write_metadata_files(get_arch_spec('llada2-mini'), tmp_path)
    model_config = lmdeploy_config.ModelConfig.from_pretrained(str(tmp_path), trust_remote_code=True)
    assert model_config.model_paradigm == 'dllm'
    assert (model_config.dllm_mask_token, model_config.dllm_block_length) == (156895, 32)
    assert (model_config.head_dim, model_config.num_layers, model_config.num_key_value_heads) == (128, 20, 4)
    assert model_config.bos_token_id is None and model_config.hf_config.partial_rotary_factor == 0.5


def _tool(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, '-m', 'lmdeploy_focus_dev.tools.random_checkpoint', *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_second_run_names_the_flag_and_overwrite_replaces(tmp_path):
    out = tmp_path / 'ckpt'
    assert _tool('--arch', TINY, str(out), '--device', 'cpu').returncode == 0
    before = (out / 'model.safetensors.index.json').read_bytes()
    again = _tool('--arch', TINY, str(out), '--device', 'cpu', '--seed', '1')
    assert again.returncode == 1 and 'Traceback' not in again.stderr
    assert again.stderr.strip() == (f'random_checkpoint: error: {out} already holds weights '
                                    f'(model-00001-of-00003.safetensors): pass --overwrite to replace them, or choose '
                                    f'another folder')
    assert (out / 'model.safetensors.index.json').read_bytes() == before
    replaced = _tool('--arch', TINY, str(out), '--device', 'cpu', '--seed', '1', '--overwrite')
    assert replaced.returncode == 0, replaced.stderr
    assert _load_all(out)['model.norm.weight'].shape == (64,)
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    onto_file = _tool('--arch', TINY, str(a_file), '--device', 'cpu')
    assert onto_file.returncode == 1 and onto_file.stderr.strip() == \
        f'random_checkpoint: error: {a_file} is a file, not a folder: choose another output folder'


@pytest.mark.skipif(torch.cuda.is_available(), reason='the message of a machine without CUDA')
def test_cli_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    """It was a traceback after the config and tokenizer files were written. Found by a newcomer run-through."""
    out = tmp_path / 'x'
    proc = _tool('--arch', TINY, str(out), '--device', 'cuda')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == 'random_checkpoint: error: --device cuda: no CUDA GPU here (use --device cpu or auto)'
    assert not out.exists()


def test_cli_a_folder_that_cannot_be_created_is_one_line():
    """A FileNotFoundError traceback before (/proc takes no new folders, whoever runs it)."""
    proc = _tool('--arch', TINY, '/proc/lmdeploy-focus-test/ckpt', '--device', 'cpu')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().startswith('random_checkpoint: error: cannot write /proc/lmdeploy-focus-test/ckpt: ')


def test_cli_help_describes_every_option_with_its_default():
    out = _tool('--help')
    assert out.returncode == 0
    text = ' '.join(out.stdout.split())
    assert text.startswith('usage: python -m lmdeploy_focus_dev.tools.random_checkpoint')
    for fragment in ('OUT_DIR folder to write the checkpoint into', 'seed of the weights', '(default: 0)',
                     'dtype of the stored weights (default: bfloat16)',
                     'auto: cuda when available, else cpu (default: auto)',
                     '--overwrite replace weights already in OUT_DIR', 'tiny-sdar: a few MB'):
        assert fragment in text, fragment


# ---------------------------------------------------------------- SDAR-MoE (Qwen3-MoE weights, model_type sdar_moe)
@pytest.fixture(scope='module')
def tiny_moe_dir(tmp_path_factory) -> Path:
    return write_random_checkpoint('tiny-sdar-moe', tmp_path_factory.mktemp('tiny_moe') / 'tiny-sdar-moe', seed=0,
                                   device='cpu')


def test_sdar_moe_arch_has_the_qwen3_30b_a3b_shape():
    spec = get_arch_spec('sdar-30b-a3b')
    assert parameter_count(spec) == pytest.approx(30.53e9, rel=2e-3)
    names = {t.name: t.shape for t in tensor_specs(spec)}
    assert names['model.layers.0.mlp.gate.weight'] == (128, 2048)  # every layer MoE (mlp_only_layers empty)
    assert names['model.layers.47.mlp.experts.127.down_proj.weight'] == (2048, 768)
    assert names['model.layers.0.self_attn.k_proj.weight'] == (4 * 128, 2048)
    assert 'model.layers.0.mlp.gate_proj.weight' not in names and 'lm_head.weight' in names
    half = get_arch_spec('sdar-30b-a3b-l24')
    def layer0(arch):
        return [(t.name, t.shape) for t in tensor_specs(arch) if t.name.startswith('model.layers.0.')]

    assert half.num_layers == 24 and layer0(half) == layer0(spec)  # the same layers, half as many
    assert parameter_count(half) == pytest.approx(15.58e9, rel=2e-3)
    config = config_json(spec)
    assert (config['model_type'], config['architectures'], config['mlp_only_layers']) == (
        'sdar_moe', ['SDARMoeForCausalLM'], [])
    assert (config['num_experts'], config['num_experts_per_tok'], config['moe_intermediate_size']) == (128, 8, 768)


def test_sdar_moe_config_goes_through_transformers_and_lmdeploy(tiny_moe_dir, monkeypatch):
    from transformers import AutoConfig
    import lmdeploy.pytorch.config as lmdeploy_config
    hf_config = AutoConfig.from_pretrained(str(tiny_moe_dir), trust_remote_code=True)
    assert type(hf_config).__name__ == 'SDARMoeConfig' and hf_config.model_type == 'sdar_moe'
    assert (hf_config.num_experts, hf_config.num_experts_per_tok, hf_config.mlp_only_layers) == (4, 2, [0])
    monkeypatch.setattr(lmdeploy_config, 'is_bf16_supported', lambda *args, **kwargs: True)
    model_config = lmdeploy_config.ModelConfig.from_pretrained(str(tiny_moe_dir), trust_remote_code=True)
    assert model_config.model_paradigm == 'dllm' and model_config.dllm_mask_token == 151669
    assert (model_config.num_layers, model_config.num_key_value_heads) == (2, 2)


def test_sdar_moe_names_load_into_upstream_sdar_moe_model(tiny_moe_dir, monkeypatch):
    """Every tensor of the checkpoint has a parameter in upstream's SDARMoeForCausalLM and fills all of them."""
    _, weights = _load_into_upstream(tiny_moe_dir, 'lmdeploy.pytorch.models.sdar_moe', 'SDARMoeForCausalLM',
                                     monkeypatch)
    assert 'model.layers.0.mlp.gate_proj.weight' in weights and 'model.layers.1.mlp.experts.3.up_proj.weight' in weights
