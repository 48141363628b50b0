"""The node graph of every launch profile, described once in ``config/graph.yaml``.

Two consumers read it and nothing else:

* ``launch/<profile>.launch.py`` turns it into launch_ros ``Node`` actions (through
  ``fedvla_bringup.graph_launch``), for ``ros2 launch fedvla_bringup <profile>.launch.py``;
* ``fedvla launch <profile>`` (:mod:`fedvla.runner`) starts the same executables, with the same
  parameter files, as processes, on machines without the ROS 2 CLI.

File layout::

    arguments:            # launch arguments: name -> {default, description, choices?, type?}
    nodes:                # node entries: key -> {package, executable, name, namespace?,
                          #   parameters? (files under config/), argument_parameters?
                          #   ({parameter: argument}, or a string template such as
                          #   "{run_dir}/robot_a" built from arguments), remappings? ([[from, to]]),
                          #   arguments? (command-line arguments; "{config}" = the config dir),
                          #   if? / unless? (an argument that switches the node: a bool, or a
                          #   string, which is on when not empty, as ``checkpoint``; with both,
                          #   the node starts when the first is on and the second off),
                          #   ends_launch? (true: when this node exits, the whole launch ends)}
    profiles:             # profile -> {description, nodes: [keys], includes? ([profiles] whose
                          #   nodes it starts too, after its own), argument_defaults?}
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedvla.config import ConfigError

GRAPH_FILE = "graph.yaml"
_ARG_TYPES = {"string": str, "bool": bool, "int": int, "float": float}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
CONDITION_TYPES = ("bool", "string")  # a string condition is on when not empty


class GraphError(ConfigError):
    """The graph file, a profile name or a launch argument is invalid."""


@dataclasses.dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()
    type: str = "string"

    def parse(self, text: str) -> Any:
        """Check ``text`` against choices/type and return the typed value."""
        if self.choices and text not in self.choices:
            raise GraphError(self.name, f"invalid value {text!r}", ", ".join(self.choices))
        if self.type == "bool":
            return parse_bool(text, self.name)
        if self.type in ("int", "float"):
            try:
                return _ARG_TYPES[self.type](text)
            except ValueError:
                raise GraphError(self.name, f"{text!r} is not a number", f"a {self.type}") from None
        return text


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    key: str
    package: str
    executable: str
    name: str
    namespace: str = ""
    parameters: tuple[str, ...] = ()
    argument_parameters: tuple[tuple[str, str], ...] = ()  # (parameter, argument)
    remappings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[str, ...] = ()
    if_argument: str = ""
    unless_argument: str = ""
    ends_launch: bool = False  # its exit ends the launch (a node that finishes a job, e.g. a report)

    @property
    def fully_qualified_name(self) -> str:
        ns = self.namespace.strip("/")
        return f"/{ns}/{self.name}" if ns else f"/{self.name}"

    def command_line_arguments(self, config_dir: Path) -> list[str]:
        return [a.replace("{config}", str(config_dir)) for a in self.arguments]


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    nodes: tuple[NodeSpec, ...]
    arguments: tuple[LaunchArgument, ...]  # with this profile's defaults applied


@dataclasses.dataclass(frozen=True)
class ResolvedNode:
    """A node to start: its spec plus the parameter values bound from launch arguments."""

    spec: NodeSpec
    parameter_files: tuple[Path, ...]
    parameter_values: dict[str, Any]
    arguments: tuple[str, ...]

    def parameters(self) -> dict[str, Any]:
        """The parameters the node starts with, as ROS merges them: each file's ``/**`` and
        fully-qualified-name sections in order, then the launch arguments' values. For ROS-free
        code that must run a node's core exactly as the graph configures it."""
        merged: dict[str, Any] = {}
        for path in self.parameter_files:
            raw = yaml.safe_load(path.read_text()) or {}
            for key in ("/**", self.spec.fully_qualified_name):
                merged.update((raw.get(key) or {}).get("ros__parameters") or {})
        return {**merged, **self.parameter_values}


def parse_bool(text: str | bool, field: str) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise GraphError(field, f"{text!r} is not a boolean", "true, false")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Launch arguments given as ``name:=value`` (as ros2 launch takes them)."""
    overrides = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ConfigError(item, "is not a launch argument", "name:=value")
        overrides[name] = value
    return overrides


class Graph:
    """The parsed ``graph.yaml``; ``config_dir`` is where its parameter files live."""

    def __init__(self, raw: Mapping[str, Any], config_dir: Path) -> None:
        self.config_dir = Path(config_dir)
        self.arguments = {name: _parse_argument(name, spec) for name, spec in (raw.get("arguments") or {}).items()}
        self.nodes = {key: self._parse_node(key, spec) for key, spec in (raw.get("nodes") or {}).items()}
        self._profiles_raw = raw.get("profiles") or {}
        if not self._profiles_raw:
            raise GraphError("profiles", "the graph defines no profile", "a mapping of profile names")
        for name in self._profiles_raw:
            self.profile(name)  # validate every profile eagerly

    @classmethod
    def load(cls, config_dir: str | Path) -> Graph:
        path = Path(config_dir) / GRAPH_FILE
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise GraphError("config_dir", f"{path} does not exist", "the config/ directory of fedvla_bringup") from None
        return cls(raw or {}, Path(config_dir))

    @property
    def profile_names(self) -> list[str]:
        return list(self._profiles_raw)

    def profile(self, name: str) -> Profile:
        raw = self._profiles_raw.get(name)
        if raw is None:
            raise GraphError("profile", f"unknown profile {name!r}", ", ".join(self._profiles_raw))
        keys = self._node_keys(name, ())
        unknown_nodes = [k for k in keys if k not in self.nodes]
        if unknown_nodes:
            raise GraphError(f"profiles.{name}.nodes", f"unknown node {unknown_nodes[0]!r}", ", ".join(self.nodes))
        nodes = tuple(self.nodes[k] for k in keys)
        defaults = {str(k): _yaml_text(v) for k, v in (raw.get("argument_defaults") or {}).items()}
        used = {a for n in nodes for a in _arguments_of(n)}
        for arg in list(defaults) + sorted(used):
            if arg not in self.arguments:
                raise GraphError(f"profiles.{name}", f"uses undeclared launch argument {arg!r}",
                                 ", ".join(self.arguments))
        unused_defaults = sorted(set(defaults) - used)
        if unused_defaults:
            raise GraphError(f"profiles.{name}.argument_defaults", f"{unused_defaults[0]!r} is read by no node of "
                             "the profile", ", ".join(a for a in self.arguments if a in used))
        arguments = []
        for arg in self.arguments.values():  # the graph's order; only the arguments the profile's nodes read
            if arg.name not in used:
                continue
            if arg.name in defaults:
                arg.parse(defaults[arg.name])
                arg = dataclasses.replace(arg, default=defaults[arg.name])
            arguments.append(arg)
        return Profile(name=name, description=str(raw.get("description", "")), nodes=nodes,
                       arguments=tuple(arguments))

    def _node_keys(self, name: str, chain: tuple[str, ...]) -> list[str]:
        """The profile's own node keys, then those of the profiles it includes (each key once)."""
        if name in chain:
            raise GraphError(f"profiles.{chain[0]}.includes", f"includes itself ({' -> '.join((*chain, name))})",
                             "profiles that do not include each other")
        raw = self._profiles_raw.get(name)
        if raw is None:
            raise GraphError(f"profiles.{chain[-1]}.includes", f"unknown profile {name!r}", ", ".join(self._profiles_raw))
        keys = list(raw.get("nodes", []))
        for included in raw.get("includes", []) or []:
            keys += [k for k in self._node_keys(included, (*chain, name)) if k not in keys]
        return keys

    def resolve(self, profile_name: str, overrides: Mapping[str, str] | None = None) -> list[ResolvedNode]:
        """The nodes a profile starts with these ``name:=value`` overrides, conditions applied."""
        profile = self.profile(profile_name)
        by_name = {a.name: a for a in profile.arguments}
        overrides = dict(overrides or {})
        self.check_argument_names(profile, overrides)
        values = {name: arg.parse(overrides.get(name, arg.default)) for name, arg in by_name.items()}
        resolved = []
        for node in profile.nodes:
            if node.if_argument and not values[node.if_argument]:
                continue
            if node.unless_argument and values[node.unless_argument]:
                continue
            resolved.append(ResolvedNode(
                spec=node,
                parameter_files=tuple(self.config_dir / f for f in node.parameters),
                parameter_values={param: bound_value(binding, values) for param, binding in node.argument_parameters},
                arguments=tuple(node.command_line_arguments(self.config_dir)),
            ))
        return resolved

    def resolve_node(self, profile_name: str, executable: str, overrides: Mapping[str, str] | None = None) -> ResolvedNode:
        """The one node running ``executable`` in the profile (ConfigError if none or several)."""
        found = [n for n in self.resolve(profile_name, overrides) if n.spec.executable == executable]
        if len(found) != 1:
            raise ConfigError("profile", f"{profile_name} runs {len(found)} {executable} nodes with these arguments",
                              f"a profile with one {executable}")
        return found[0]

    def check_argument_names(self, profile: Profile, names: Iterable[str], *, unknown_too: bool = True) -> None:
        """Refuse arguments the profile does not use: silently ignoring ``record:=true`` where nothing
        records would be a lie. ``unknown_too``: also names that no profile uses (typos)."""
        declared = {a.name for a in profile.arguments}
        allowed = ", ".join(sorted(declared)) or "none"
        for name in sorted(set(names) - declared):
            if name in self.arguments:
                users = [p for p in self._profiles_raw if name in {a.name for a in self.profile(p).arguments}]
                raise GraphError(name, f"the {profile.name} profile does not use this argument (no node of it reads "
                                 f"it; profiles that do: {', '.join(users)})", allowed)
            if unknown_too:
                raise GraphError(name, "unknown launch argument", allowed)

    def _parse_node(self, key: str, spec: Mapping[str, Any]) -> NodeSpec:
        where = f"nodes.{key}"
        known = {"package", "executable", "name", "namespace", "parameters", "argument_parameters",
                 "remappings", "arguments", "if", "unless", "ends_launch"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise GraphError(f"{where}.{unknown[0]}", "unknown key", ", ".join(sorted(known)))
        for required in ("package", "executable", "name"):
            if not spec.get(required):
                raise GraphError(f"{where}.{required}", "is missing", "a non-empty string")
        for file in spec.get("parameters", []):
            if not (self.config_dir / file).is_file():
                raise GraphError(f"{where}.parameters", f"{file} does not exist in {self.config_dir}",
                                 "files under config/")
        node = NodeSpec(
            key=key,
            package=spec["package"],
            executable=spec["executable"],
            name=spec["name"],
            namespace=spec.get("namespace", ""),
            parameters=tuple(spec.get("parameters", [])),
            argument_parameters=tuple((str(p), str(a)) for p, a in (spec.get("argument_parameters") or {}).items()),
            remappings=tuple((str(a), str(b)) for a, b in spec.get("remappings", [])),
            arguments=tuple(str(a) for a in spec.get("arguments", [])),
            if_argument=spec.get("if", ""),
            unless_argument=spec.get("unless", ""),
            ends_launch=parse_bool(spec.get("ends_launch", False), f"{where}.ends_launch"),
        )
        for arg in _arguments_of(node):
            if arg not in self.arguments:
                raise GraphError(where, f"uses undeclared launch argument {arg!r}", ", ".join(self.arguments))
        for arg in filter(None, (node.if_argument, node.unless_argument)):
            if self.arguments[arg].type not in CONDITION_TYPES:
                raise GraphError(where, f"condition argument {arg!r} is of type {self.arguments[arg].type}",
                                 "a bool argument, or a string one (on when not empty)")
        return node


_TEMPLATE_FIELD = re.compile(r"\{(\w+)\}")


def template_parts(binding: str) -> list[tuple[bool, str]]:
    """A parameter binding as (is_argument, text) pieces: ``"{run_dir}/a"`` → [(True, "run_dir"),
    (False, "/a")]; a plain argument name is one argument piece."""
    if "{" not in binding:
        return [(True, binding)]
    parts, position = [], 0
    for match in _TEMPLATE_FIELD.finditer(binding):
        if match.start() > position:
            parts.append((False, binding[position:match.start()]))
        parts.append((True, match.group(1)))
        position = match.end()
    if position < len(binding):
        parts.append((False, binding[position:]))
    return parts


def bound_value(binding: str, values: Mapping[str, Any]) -> Any:
    """The parameter value of a binding: the argument's typed value, or the filled template."""
    parts = template_parts(binding)
    if parts == [(True, binding)]:
        return values[binding]
    return "".join(str(values[text]) if is_arg else text for is_arg, text in parts)


def _arguments_of(node: NodeSpec) -> set[str]:
    bound = {text for _, binding in node.argument_parameters for is_arg, text in template_parts(binding) if is_arg}
    return bound | {a for a in (node.if_argument, node.unless_argument) if a}


def _parse_argument(name: str, spec: Mapping[str, Any]) -> LaunchArgument:
    arg_type = spec.get("type", "string")
    if arg_type not in _ARG_TYPES:
        raise GraphError(f"arguments.{name}.type", f"unknown type {arg_type!r}", ", ".join(_ARG_TYPES))
    if "default" not in spec or not spec.get("description"):
        raise GraphError(f"arguments.{name}", "needs a default and a description", "default: ..., description: ...")
    choices = tuple(_yaml_text(c) for c in spec.get("choices", []))
    if arg_type == "bool" and not choices:
        choices = ("true", "false")
    arg = LaunchArgument(name=name, default=_yaml_text(spec["default"]), description=str(spec["description"]),
                         choices=choices, type=arg_type)
    arg.parse(arg.default)
    return arg


def _yaml_text(value: Any) -> str:
    """Launch arguments are strings; YAML may have parsed ``true``/``1`` into other types."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def find_config_dir() -> Path:
    """The installed ``share/fedvla_bringup/config`` (ament index), else the source tree's."""
    from fedvla.paths import ament_prefixes

    for prefix in ament_prefixes():
        candidate = prefix / "share" / "fedvla_bringup" / "config"
        if (candidate / GRAPH_FILE).is_file():
            return candidate
    source = Path(__file__).resolve().parents[3] / "config"
    if (source / GRAPH_FILE).is_file():
        return source
    raise GraphError("config_dir", "cannot find fedvla_bringup's config/graph.yaml",
                     "build the workspace (.ci/setup) or source a ROS 2 install")
