"""The scorers live in the runtime (``lmdeploy_focus.calibrate.scorers``: the calibration command reads the same
task files); this module keeps the benchmark's import path."""
from lmdeploy_focus.calibrate.scorers import *  # noqa: F401,F403
from lmdeploy_focus.calibrate.scorers import (DEFAULT_ANSWER_SCORER, DEFAULT_REFERENCE_SCORER, NAMES,  # noqa: F401
                                              ScorerError, check_target, final_number, get_scorer)
