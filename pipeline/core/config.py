"""Configuration values checked against their dataclass annotations, and the error every check raises."""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


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
    """A dataclass ``hint`` from a mapping of its fields (or itself)."""
    if isinstance(value, hint):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}, got {value!r}")
    return dataclass_from_mapping(hint, value)


def dataclass_from_mapping(cls: type[T], values: Mapping[str, Any], skip: Collection[str] = ()) -> T:
    """``cls(**values)``, every value checked against its field's annotation (:func:`typed_value`): the one way a
    mapping (YAML, ``key=value`` overrides, a nested setting) becomes a configuration dataclass.

    An unknown key, a missing required one (fields in ``skip`` are neither) or a value of the wrong type raises
    :class:`TypeError` starting with the key, which each caller prefixes with where the mapping came from.
    """
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init and field.name not in skip}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    missing = [name for name, field in fields.items() if _is_required(field) and name not in values]
    if missing:
        raise TypeError(f"{missing[0]}: missing, and it has no default")
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = typed_value(value, hints[key])
        except TypeError as error:
            raise TypeError(f"{key}: {error}") from None
    return cls(**typed)


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _described(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    return getattr(hint, "__name__", str(hint))
