"""Patch 3: our SDAR builder goes before upstream's in ``AutoModelConfigBuilder._sub_classes``;
the LLaDA2 builder registers itself (see package docstring)."""


def apply(configurations_module) -> None:
    from lmdeploy.pytorch.configurations.builder import AutoModelConfigBuilder
    from lmdeploy.pytorch.configurations.sdar import SDARModelConfigBuilder

    from ..config.builders import FocusSDARModelConfigBuilder

    registry = AutoModelConfigBuilder._sub_classes
    registry.remove(FocusSDARModelConfigBuilder)
    registry.insert(registry.index(SDARModelConfigBuilder), FocusSDARModelConfigBuilder)
