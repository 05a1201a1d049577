"""Errors a user can act on, shown as such: a plain function's refusal becomes a ``dg.Failure`` with its message."""

import contextlib
from collections.abc import Iterator

import dagster as dg

from pipeline.core.config import ConfigError
from pipeline.core.files import DiskFullError
from pipeline.core.layout import DataError

USER_ERRORS = (ConfigError, DataError, FileNotFoundError, DiskFullError)
"""Bad settings, a step whose inputs are not there yet or are damaged, a full disk: the message says what to do,
a traceback would not."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        raise dg.Failure(description=str(error)) from error
