"""The FOCUS importance delta is all-reduced over attention TP ranks before selection."""
import torch
import torch.distributed as dist

from lmdeploy_focus.models import importance_reduce
from lmdeploy_focus.kernels.default.focus import masked_importance


def test_single_rank_is_a_no_op_without_a_dist_context():
    delta = torch.randn(8)
    assert importance_reduce.attention_tp_size() == 1
    assert importance_reduce.reduce_importance_delta(delta.clone()).equal(delta)


def test_two_ranks_sum_their_local_head_deltas_to_the_full_delta(monkeypatch):
    """Simulate 2 ranks holding half the heads each; the all-reduce (here: add the other rank's
    delta) must give every rank the delta of the whole model."""
    n, heads, kv_heads, dim = 10, 8, 4, 16
    q0, q1 = torch.randn(n, heads, dim), torch.randn(n, heads, dim)
    k0, k1 = torch.randn(n, kv_heads, dim), torch.randn(n, kv_heads, dim)
    start, lens, cand = torch.tensor([0, 6]), torch.tensor([6, 4]), torch.rand(n) < 0.7

    def delta(h, kvh):
        return (masked_importance(q1[:, h], k1[:, kvh], start, lens, cand, dim**-0.5)
                - masked_importance(q0[:, h], k0[:, kvh], start, lens, cand, dim**-0.5))

    full = delta(slice(0, heads), slice(0, kv_heads))
    rank0, rank1 = delta(slice(0, heads // 2), slice(0, kv_heads // 2)), delta(slice(heads // 2, heads),
                                                                           slice(kv_heads // 2, kv_heads))
    ops = []

    def all_reduce(t, op=dist.ReduceOp.SUM, **kwargs):  # _all_reduce's default op is SUM: the call must keep it
        ops.append(op)
        return t.add_(rank1)

    monkeypatch.setattr(importance_reduce, '_all_reduce', all_reduce)
    reduced = importance_reduce.reduce_importance_delta(rank0.clone(), tp_size=2)
    assert ops == [dist.ReduceOp.SUM], ops
    torch.testing.assert_close(reduced, full, rtol=1e-5, atol=1e-5)
