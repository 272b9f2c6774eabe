"""checks/graph_equivalence_check.py: the engine fields each CLI choice reaches (the GPU run itself is
benchmark/gpu/graph_step_check.sh)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check():
    spec = importlib.util.spec_from_file_location('graph_equivalence_check',
                                                  os.path.join(ROOT, 'checks', 'graph_equivalence_check.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_is_the_four_arms_at_static_unmasking():
    chk = _check()
    args = chk.parse_args(['--model', 'M', '--out', 'o.json'])
    assert args.arms == ['stock', 'delayed', 'focus-importance', 'focus-leftmost']
    assert chk.unmasking_fields(args) == dict(dllm_unmasking_strategy='low_confidence_static',
                                              dllm_denoising_steps=8)


def test_fast_arms_and_dynamic_unmasking_reach_the_engine_fields():
    chk = _check()
    args = chk.parse_args(['--model', 'M', '--out', 'o.json', '--unmasking', 'dynamic', '--block-length', '16',
                           '--threshold', '0.7', '--arms', 'focus-leftmost-fast', 'delayed-fast'])
    assert chk.unmasking_fields(args) == dict(dllm_unmasking_strategy='low_confidence_dynamic',
                                              dllm_denoising_steps=16, dllm_confidence_threshold=0.7)
    assert chk.parse_args(['--model', 'M', '--out', 'o.json']).threshold == 0.9  # the benchmarks' threshold
    for arm in args.arms:
        assert chk.ARMS[arm]['dllm_delayed_cache_commit'] == 'fast'
    assert chk.ARMS['focus-leftmost-fast']['dllm_focus_policy'] == 'leftmost'
    assert chk.ARMS['focus-importance'].get('dllm_delayed_cache_commit', 'exact') == 'exact'


def test_auto_arms_reach_the_controller():
    chk = _check()
    args = chk.parse_args(['--model', 'M', '--out', 'o.json', '--arms', 'focus-auto', 'focus-auto-leftmost'])
    assert [chk.ARMS[a]['dllm_focus_alpha'] for a in args.arms] == ['auto', 'auto']
    assert chk.ARMS['focus-auto-leftmost']['dllm_focus_policy'] == 'leftmost'


def test_each_engine_is_closed_and_its_memory_released_before_the_next(monkeypatch):
    """One engine per (arm, eager/graphs) in one process: the last one's weights and KV cache must be freed before
    the next starts, even when its generation fails (a big model's third engine ran out of memory without)."""
    import pytest
    from lmdeploy.pytorch.engine import Engine
    chk = _check()
    events = []

    class FakeEngine:
        def close(self):
            events.append('close')

    monkeypatch.setattr(Engine, 'from_pretrained', staticmethod(lambda *a, **k: FakeEngine()))
    monkeypatch.setattr(chk, 'release_device_memory', lambda: events.append('release'))

    async def fails(*args):
        raise RuntimeError('generation failed')

    monkeypatch.setattr(chk, 'generate', fails)
    args = chk.parse_args(['--model', 'M', '--out', 'o.json'])
    with pytest.raises(RuntimeError, match='generation failed'):
        chk.run_engine('M', chk.ARMS['stock'], True, [[1, 2]], args)
    assert events == ['close', 'release']


def test_the_graph_engine_resets_its_graph_runner_between_two_runs(monkeypatch):
    """The reset case (a weight update while serving): outputs before and after upstream's graph-runner reset, the
    second run on new session ids, and the buckets captured again; a reset that leaves step graphs is an error."""
    import asyncio
    from types import SimpleNamespace

    import pytest
    chk = _check()
    calls = []

    async def fake_generate(engine, prompts, max_new_tokens, first_session=1):
        calls.append(first_session)
        steps.buckets[len(calls) * 10] = object()  # a step captures a bucket
        return [[first_session]] * len(prompts)

    steps = SimpleNamespace(buckets={})
    model = SimpleNamespace(step_graphs=steps)
    agent = SimpleNamespace(reset_graph_runner=lambda: steps.buckets.clear(),
                            patched_model=SimpleNamespace(get_model=lambda: model))
    engine = SimpleNamespace(executor=SimpleNamespace(model_agent=agent))
    monkeypatch.setattr(chk, 'generate', fake_generate)
    first, again, buckets = asyncio.run(chk.generate_reset_generate(engine, [[1], [2], [3]], 4))
    assert calls == [1, 4] and first == [[1]] * 3 and again == [[4]] * 3 and buckets == [20]
    agent.reset_graph_runner = lambda: None  # a reset that keeps the graphs
    with pytest.raises(RuntimeError, match='left step graphs'):
        asyncio.run(chk.generate_reset_generate(engine, [[1]], 4))
