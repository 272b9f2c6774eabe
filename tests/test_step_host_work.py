"""Issue 14 item 2: the plugin's per-step host work does not grow with the batch.

One delayed-cache / FOCUS decode step (forward, row sampling, unmasking, bookkeeping, statistics)
through the CPU harness at two batch sizes, counting what the host does in the plugin's own code:
the Python lines it executes (``sys.settrace``, files under ``lmdeploy_focus/``) and the torch ops it
dispatches (``TorchDispatchMode``). Both must be the same for 2 and 12 sequences: a loop over
sequences or rows on the host would show as a difference. All sequences sit at the same point of
their block, so every branch is taken alike. Not counted: the torch fallbacks of the kernels
(``kernels/default/``), which stand in on CPU for Triton kernels that are one launch each on the GPU
(the paged-attention fallback loops over sequences), and the harness's own bookkeeping
(``lmdeploy_focus_dev``: its page tables are built per sequence, upstream's are not).
"""
import sys

import pytest

from lmdeploy_focus_dev.testing.decode_step_work import FALLBACK_DIR, PLUGIN_DIR, EngineOps, decode_step

L = 8


def _plugin_lines():
    """A ``sys.settrace`` tracer counting executed lines in the plugin's files, and its counter."""
    counter = {'lines': 0}

    def local(frame, event, arg):
        if event == 'line':
            counter['lines'] += 1
        return local

    def tracer(frame, event, arg):
        name = frame.f_code.co_filename
        return local if name.startswith(PLUGIN_DIR) and not name.startswith(FALLBACK_DIR) else None

    return tracer, counter


def _step_work(batch_size: int, alpha, padded: bool, sync_free: bool) -> tuple[int, int]:
    step = decode_step(batch_size, alpha, padded, block_length=L, sync_free_rows=4096 if sync_free else 0)
    assert step.sync_free == sync_free
    step()  # first use: lazy state, caches
    step.prepare()
    tracer, counter = _plugin_lines()
    counting = EngineOps()
    sys.settrace(tracer)
    try:
        with counting:
            step.run()
    finally:
        sys.settrace(None)
    return counter['lines'], counting.total


# sync_free: both batch sizes step without reading their row counts (else both read)
@pytest.mark.parametrize('alpha, padded, sync_free', [(1.5, False, False), (1.5, True, False), ('auto', True, False),
                                                     (1.5, False, True), (1.5, True, True)])
def test_plugin_step_work_does_not_grow_with_the_batch(alpha, padded, sync_free):
    small = _step_work(2, alpha, padded, sync_free)
    large = _step_work(12, alpha, padded, sync_free)
    assert small[0] > 100 and small[1] > 50, f'nothing counted: {small}'
    assert large == small, f'plugin lines / torch ops per step: {small} at 2 sequences, {large} at 12'


@pytest.mark.parametrize('padded', [True, False])
def test_the_listing_by_line_accounts_for_every_op_outside_the_graphs(padded):
    """tools/step_host_ops's counts: every op outside the graph replays has a source line; a padded step runs
    its layers under replays (one graph launch each on the GPU), an unpadded one has no replays at all."""
    step = decode_step(3, 1.5, padded, block_length=L, sync_free_rows=0)
    step()
    step.prepare()
    with EngineOps() as ops:
        step.run()
    assert sum(ops.sites.values()) == ops.outside_graphs
    assert all(site.startswith(('lmdeploy_focus/', 'lmdeploy/')) for site in ops.sites)
    # the harness's fresh state (prepare) is not billed to the step
    assert not any('.py:' in site and ' fresh' in site.split('.py:')[1] for site in ops.sites)
    if padded:
        assert 0 < ops.outside_graphs < ops.total / 2
        assert not any('sparse_step.py' in site and ' deep' in site for site in ops.sites)  # the deep layers replay
        # the plugin's kernels inside the graphs: the front's processing set among them, views left out
        assert any('processing_set.py' in site for site in ops.graph_kernels)
        assert 0 < sum(ops.graph_kernels.values()) < ops.graph_ops
    else:
        assert ops.outside_graphs == ops.total and not ops.graph_kernels


def test_kernel_filter_counts_copies_and_leaves_out_views_and_allocations():
    """``launches_a_kernel`` on real aten calls: a dtype conversion or a reshape that must copy is a kernel (both
    reach a dispatch mode as composites marked as views), the same calls that alias are not, nor are bare
    allocations; arithmetic is."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from lmdeploy_focus_dev.testing.decode_step_work import launches_a_kernel

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen.append((func.__name__, launches_a_kernel(func, args, out)))
            return out

    flags = torch.rand(4, 8) < 0.5
    ints = torch.randint(0, 9, (4, 8))
    transposed = ints.t()
    cases = [(lambda: flags.long(), True), (lambda: ints.long(), False),  # to: a copy / the tensor itself
             (lambda: transposed.reshape(-1), True), (lambda: ints.reshape(-1), False),  # reshape: copy / view
             (lambda: ints.view(8, 4), False), (lambda: torch.empty_like(ints), False), (lambda: ints + 1, True)]
    with torch.inference_mode():
        for call, expected in cases:
            with Calls() as calls:
                call()
            assert len(calls.seen) == 1 and calls.seen[0][1] is expected, (calls.seen, expected)
