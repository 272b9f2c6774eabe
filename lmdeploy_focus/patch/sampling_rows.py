"""Patch 17: the agent strategy picks the rows upstream's sampler runs on."""


def apply(agent_module) -> None:
    agent_class = agent_module.BaseModelAgent
    upstream = agent_class.async_sampling_logits
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is not None:
        return

    async def async_sampling_logits(self, logits, inputs, extra_inputs, sampling_inputs):
        pick = getattr(self.agent_strategy, 'sampling_rows', None)
        if pick is not None:
            # the engine's logprobs_mode: whether upstream computes the logprobs a request asks for
            logits, sampling_inputs = pick(logits, sampling_inputs, self.misc_config.logprobs_mode)
        return await upstream(self, logits, inputs, extra_inputs, sampling_inputs)

    async_sampling_logits.__lmdeploy_focus_upstream__ = upstream
    async_sampling_logits.__wrapped__ = upstream
    agent_class.async_sampling_logits = async_sampling_logits
