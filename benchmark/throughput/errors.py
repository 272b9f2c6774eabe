"""A user error that the CLI reports as one line (no traceback)."""


class BenchmarkInputError(Exception):
    """Bad dataset path / format or an unusable option combination."""
