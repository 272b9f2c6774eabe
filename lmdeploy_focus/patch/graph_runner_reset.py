"""Patch 14: upstream's CUDA graph-runner reset also drops the plugin's decode-step graphs."""


def apply(runner_module) -> None:
    runner_class = runner_module.CUDAGraphRunner
    upstream = runner_class.reset
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is not None:
        return

    def reset(self):
        upstream(self)
        reset_step_graphs = getattr(self.model, 'reset_step_graphs', None)
        if reset_step_graphs is not None:
            reset_step_graphs()

    reset.__lmdeploy_focus_upstream__ = upstream
    reset.__wrapped__ = upstream
    runner_class.reset = reset
