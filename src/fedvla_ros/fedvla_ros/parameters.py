"""Declare a node's parameters from a core config dataclass and build the config from them.

Parameter names are the config's field names, defaults are its defaults, and validation is the
config's own ``__post_init__``: a bad value in a YAML file, on the command line or in a launch
file fails with the same one-line :class:`fedvla.config.ConfigError` as in Python.
"""
from __future__ import annotations

from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.parameter import Parameter

from fedvla.config import ConfigError, default_values, from_mapping
from fedvla.runner import parameter_literal

C = TypeVar("C")
_TYPE_NAMES = {
    Parameter.Type.BOOL: "boolean (true/false)",
    Parameter.Type.INTEGER: "integer",
    Parameter.Type.DOUBLE: "floating-point number",
    Parameter.Type.STRING: "string",
    Parameter.Type.STRING_ARRAY: "list of strings",
}


def declare(node: Node, name: str, default: Any, description: str = "") -> Any:
    """Declare one parameter (empty lists are string arrays) and return its value.

    A value of the wrong type (``fps:=fast``) becomes a :class:`ConfigError` naming the
    parameter and the expected type, instead of rclpy's exception.
    """
    # Floats accept integers (fps:=30): the core config converts and validates the value.
    descriptor = ParameterDescriptor(description=description, dynamic_typing=isinstance(default, float))
    if isinstance(default, (list, tuple)) and not default:
        declared = Parameter.Type.STRING_ARRAY
    else:
        declared = list(default) if isinstance(default, tuple) else default
    try:
        value = node.declare_parameter(name, declared, descriptor).value
        # A string array declared by type has no value until one is given: that means empty.
        return [] if value is None and declared is Parameter.Type.STRING_ARRAY else value
    except InvalidParameterTypeException:
        given = getattr(node, "_parameter_overrides", {}).get(name)
        shown = f" {given.value!r}" if given is not None else ""
        expected = Parameter.Type.from_parameter_value(declared) if not isinstance(declared, Parameter.Type) else declared
        raise ConfigError(name, f"wrong type{shown}",
                          f"a {_TYPE_NAMES.get(expected, expected.name.lower())}, e.g. {parameter_literal(default)}") from None


def declare_config(node: Node, config_class: type[C]) -> C:
    """Declare one parameter per field of ``config_class`` and return the validated config."""
    values = {name: declare(node, name, default) for name, default in default_values(config_class).items()}
    return from_mapping(config_class, values)
