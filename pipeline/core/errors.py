"""The errors a user can act on: a bad setting, a dataset file missing or damaged, a full disk. Every entry point
turns them into one line (a Dagster step's failure, a command line's ``error:``), never a traceback."""

from pipeline.core.config import ConfigError
from pipeline.core.files import DiskFullError
from pipeline.core.layout import DataError

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, DiskFullError)
