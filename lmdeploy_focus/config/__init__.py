"""FOCUS configuration: the option set, its validation, and model-config facts."""
from .options import DEFAULT_FOCUS_ALPHA, OPTIONS_KEY, FocusOptions

__all__ = ['DEFAULT_FOCUS_ALPHA', 'OPTIONS_KEY', 'FocusOptions']
