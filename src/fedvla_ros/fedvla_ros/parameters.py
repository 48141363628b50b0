"""Declare a node's parameters from a core config dataclass and build the config from them.

Parameter names are the config's field names, defaults are its defaults, and validation is the
config's own ``__post_init__``: a bad value in a YAML file, on the command line or in a launch
file fails with the same one-line :class:`fedvla.config.ConfigError` as in Python.
"""
from __future__ import annotations

from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from fedvla.config import default_values, from_mapping

C = TypeVar("C")


def declare(node: Node, name: str, default: Any, description: str = "") -> Any:
    """Declare one parameter (empty lists are string arrays) and return its value."""
    descriptor = ParameterDescriptor(description=description)
    if isinstance(default, (list, tuple)) and not default:
        return node.declare_parameter(name, Parameter.Type.STRING_ARRAY, descriptor).value or []
    value = node.declare_parameter(name, list(default) if isinstance(default, tuple) else default, descriptor).value
    return value


def declare_config(node: Node, config_class: type[C]) -> C:
    """Declare one parameter per field of ``config_class`` and return the validated config."""
    values = {name: declare(node, name, default) for name, default in default_values(config_class).items()}
    return from_mapping(config_class, values)
