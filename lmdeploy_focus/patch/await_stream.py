"""Patch 18: the model agent lets the agent strategy await before a forward."""


def apply(agent_module) -> None:
    agent_class = agent_module.BaseModelAgent
    upstream = agent_class.async_forward
    if getattr(upstream, '__lmdeploy_focus_upstream__', None) is not None:
        return

    async def async_forward(self, inputs, cache_inputs=None):
        before = getattr(self.agent_strategy, 'before_forward', None)
        if before is not None:
            await before(inputs)
        return await upstream(self, inputs, cache_inputs=cache_inputs)

    async_forward.__lmdeploy_focus_upstream__ = upstream
    async_forward.__wrapped__ = upstream
    agent_class.async_forward = async_forward
