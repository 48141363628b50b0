"""Validated configuration dataclasses shared by every part of the core.

Every component takes a ``@dataclass(kw_only=True)`` config whose ``__post_init__`` checks the
values and raises :class:`ConfigError` with one line naming the field, what was wrong and what
is allowed. ROS nodes declare one parameter per field (same names), so a bad parameter in a YAML
file or on the command line produces the same message as a bad value in Python.
"""
from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is invalid. ``str(err)`` is one line, meant for the user."""

    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.allowed = allowed
        message = f"{field}: {problem}"
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


def require(condition: bool, field: str, problem: str, allowed: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, problem, allowed)


def require_positive(value: float, field: str) -> None:
    require(value > 0, field, f"must be positive, got {value!r}", "a number > 0")


def parse_enum(enum_type: type[enum.Enum], value: Any, field: str) -> Any:
    """Accept an enum member or its value (as YAML and ROS parameters carry strings)."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_type)
        raise ConfigError(field, f"unknown value {value!r}", allowed) from None


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def default_values(cls: type) -> dict[str, Any]:
    """Field defaults of a config class, with enums as their plain values (for parameters)."""
    values: dict[str, Any] = {}
    for name, field in config_fields(cls).items():
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        values[name] = value.value if isinstance(value, enum.Enum) else value
    return values


def from_mapping(cls: type[C], values: Mapping[str, Any], *, where: str = "") -> C:
    """Build config ``cls`` from a plain mapping, rejecting unknown keys with a clear error."""
    known = config_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}", "unknown setting", ", ".join(sorted(known)))
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints.get(name), value, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, field: str) -> Any:
    """Convert YAML/ROS parameter values to the annotated type where that is unambiguous."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return parse_enum(hint, value, field)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is tuple and isinstance(value, Iterable) and not isinstance(value, str):
        return tuple(value)
    return value
