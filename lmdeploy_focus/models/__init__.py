"""Model classes registered in LMDeploy's CUSTOM_MODULE_MAP (FOCUS SDAR, LLaDA2)."""
