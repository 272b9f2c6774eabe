"""The task file format lives in the runtime (``lmdeploy_focus.calibrate.task_file``, shared with the calibration
command); here its errors become the benchmark's input errors (``eval_quality`` reports those as one line)."""
from lmdeploy_focus.calibrate import task_file as _shared
from lmdeploy_focus.calibrate.task_file import KNOWN_KEYS, Task  # noqa: F401
from throughput.errors import BenchmarkInputError


class TaskFileError(BenchmarkInputError):
    """A task file that cannot be read, or a line that is not a valid task."""


def parse_task(record, path: str, line: int) -> Task:
    try:
        return _shared.parse_task(record, path, line)
    except _shared.TaskFileError as e:
        raise TaskFileError(str(e)) from None


def load_tasks(path: str) -> list[Task]:
    try:
        return _shared.load_tasks(path)
    except _shared.TaskFileError as e:
        raise TaskFileError(str(e)) from None
