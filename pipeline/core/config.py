"""Configuration values checked against their dataclass annotations, and the error every check raises."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


def typed_value(value: Any, hint: Any) -> Any:
    """``value`` if it fits the annotation ``hint``, else :class:`TypeError` saying what was expected.

    Handles ``int``, ``float``, ``bool``, ``str``, unions (``X | None``, ``int | list[X]``: the first that
    fits), ``list[X]``, ``dict[K, V]`` and dataclasses (from a mapping of their fields). A bool is no int; an
    int is accepted where a float is expected, and so is text in float notation (PyYAML reads ``1e-4``, without
    a dot, as a string).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) == 1:
            return typed_value(value, inner[0])
        for candidate in inner:
            with contextlib.suppress(TypeError):
                return typed_value(value, candidate)
        raise TypeError(f"expected {' or '.join(map(_described, inner))}, got {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass_value(value, hint)
    if origin is list and isinstance(value, list | tuple):
        return [typed_value(item, args[0]) for item in value]
    if origin is dict and isinstance(value, dict):
        return {typed_value(key, args[0]): typed_value(item, args[1]) for key, item in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise TypeError(f"expected {_described(hint)}, got {value!r}")


def _dataclass_value(value: Any, hint: type) -> Any:
    """A dataclass ``hint`` from a mapping of its fields (or itself); a wrong field is named in the error."""
    if isinstance(value, hint):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}, got {value!r}")
    hints = typing.get_type_hints(hint)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise TypeError(f"{unknown[0]}: unknown key (known: {', '.join(hints)})")
    fields = {}
    for key, item in value.items():
        try:
            fields[key] = typed_value(item, hints[key])
        except TypeError as error:
            raise TypeError(f"{key}: {error}") from None
    return hint(**fields)


def _described(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    return getattr(hint, "__name__", str(hint))
