"""Build a launch description for one profile of ``config/graph.yaml``.

Every ``launch/<profile>.launch.py`` is two lines that call :func:`profile_launch_description`;
the node list, parameter files and argument bindings come from the graph, which is also what
``fedvla launch <profile>`` reads on machines without the ROS 2 CLI.

Before any node starts, the launch refuses an argument of the graph that this profile does not use
(``record:=true`` where nothing records) with one error line. A name the graph does not know at
all only gets a warning here (``fedvla launch`` refuses it): a launch file that includes ours
hands its own command-line arguments down with ours. A node of another project that is not
installed (RViz on a machine without a full ROS 2 install) is one warning, not an exception that
leaves the launch half started.
"""
from __future__ import annotations

import os
from pathlib import Path

import launch.logging
from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import (AndSubstitution, LaunchConfiguration, NotEqualsSubstitution, NotSubstitution,
                                  TextSubstitution)
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from fedvla.graph import Graph, GraphError, LaunchArgument, NodeSpec, Profile, template_parts
from fedvla.runner import OPTIONAL_PACKAGES
from fedvla.supervision import PARENT_PID_ENV

_PYTHON_TYPES = {"string": str, "bool": bool, "int": int, "float": float}


def config_dir() -> Path:
    return Path(get_package_share_directory("fedvla_bringup")) / "config"


def declare_argument(arg: LaunchArgument) -> DeclareLaunchArgument:
    return DeclareLaunchArgument(arg.name, default_value=arg.default, description=arg.description,
                                 choices=list(arg.choices) or None)


def _bound_parameter(binding: str, arg_types: dict[str, str]) -> ParameterValue:
    parts = template_parts(binding)
    if parts == [(True, binding)]:
        return ParameterValue(LaunchConfiguration(binding), value_type=_PYTHON_TYPES[arg_types[binding]])
    pieces = [LaunchConfiguration(text) if is_arg else TextSubstitution(text=text) for is_arg, text in parts]
    return ParameterValue(pieces, value_type=str)


def _switch(argument: str, arg_types: dict[str, str]):
    """"true"/"false" of a condition argument: a bool as it is, a string when not empty."""
    if arg_types[argument] == "bool":
        return LaunchConfiguration(argument)
    return NotEqualsSubstitution(LaunchConfiguration(argument), "")


def _condition(node: NodeSpec, arg_types: dict[str, str]) -> IfCondition | UnlessCondition | None:
    if node.if_argument and node.unless_argument:
        return IfCondition(AndSubstitution(_switch(node.if_argument, arg_types),
                                           NotSubstitution(_switch(node.unless_argument, arg_types))))
    if node.if_argument:
        return IfCondition(_switch(node.if_argument, arg_types))
    if node.unless_argument:
        return UnlessCondition(_switch(node.unless_argument, arg_types))
    return None


def package_installed(package: str) -> bool:
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _warn_not_installed(node: NodeSpec, arg_types: dict[str, str]) -> OpaqueFunction:
    switch = f"; {node.if_argument}:=false silences this" if node.if_argument else ""

    def warn(context: LaunchContext) -> None:
        launch.logging.get_logger("fedvla").warning(
            f"{node.fully_qualified_name} does not start: {node.package} is not installed (it needs a full ROS 2 "
            f"install or the docker image); the rest of the profile runs{switch}")

    return OpaqueFunction(function=warn, condition=_condition(node, arg_types))


def node_action(node: NodeSpec, graph: Graph, arg_types: dict[str, str]) -> Node | OpaqueFunction:
    if node.package in OPTIONAL_PACKAGES and not package_installed(node.package):
        return _warn_not_installed(node, arg_types)
    parameters: list = [str(graph.config_dir / f) for f in node.parameters]
    bound = {param: _bound_parameter(binding, arg_types) for param, binding in node.argument_parameters}
    if bound:
        parameters.append(bound)
    condition = _condition(node, arg_types)
    return Node(
        package=node.package,
        executable=node.executable,
        name=node.name,
        namespace=node.namespace or None,
        parameters=parameters,
        remappings=list(node.remappings),
        arguments=node.command_line_arguments(graph.config_dir),
        condition=condition,
        output="screen",
        emulate_tty=True,
        on_exit=Shutdown(reason=f"{node.fully_qualified_name} finished") if node.ends_launch else None,
        additional_env={PARENT_PID_ENV: str(os.getpid())},  # launch spawns its nodes itself (supervision.py)
    )


def _check_arguments(graph: Graph, profile: Profile) -> OpaqueFunction:
    def check(context: LaunchContext) -> None:
        given = [entry.split(":=", 1)[0] for entry in context.argv if ":=" in entry]
        try:
            graph.check_argument_names(profile, [*given, *context.launch_configurations], unknown_too=False)
        except GraphError as err:  # one line from launch, and no node is started
            raise RuntimeError(f"fedvla {profile.name}: {err}") from None
        unknown = sorted(set(given) - {a.name for a in profile.arguments} - set(graph.arguments))
        if unknown:
            launch.logging.get_logger("fedvla").warning(
                f"{', '.join(unknown)}: not an argument of the {profile.name} profile, ignored (its arguments: "
                f"{', '.join(a.name for a in profile.arguments)})")

    return OpaqueFunction(function=check)


def profile_launch_description(profile_name: str) -> LaunchDescription:
    graph = Graph.load(config_dir())
    profile = graph.profile(profile_name)
    arg_types = {a.name: a.type for a in profile.arguments}
    actions: list = [_check_arguments(graph, profile)]
    actions.extend(declare_argument(a) for a in profile.arguments)
    actions.append(LogInfo(msg=f"fedvla {profile_name}: {profile.description}"))
    actions.extend(node_action(n, graph, arg_types) for n in profile.nodes)
    return LaunchDescription(actions)
