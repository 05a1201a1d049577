"""Errors a user can act on, shown as such: a plain function's refusal becomes a ``dg.Failure`` with its message."""

import contextlib
from collections.abc import Iterator

import dagster as dg

from pipeline.core.errors import USER_ERRORS


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A step's one-line failure for :data:`pipeline.core.errors.USER_ERRORS`, as the command lines print them."""
    try:
        yield
    except USER_ERRORS as error:
        raise dg.Failure(description=str(error)) from error
