"""Build a launch description for one profile of ``config/graph.yaml``.

Every ``launch/<profile>.launch.py`` is two lines that call :func:`profile_launch_description`;
the node list, parameter files and argument bindings come from the graph, which is also what
``fedvla launch <profile>`` reads on machines without the ROS 2 CLI.
"""
from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, TextSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from fedvla.graph import Graph, LaunchArgument, NodeSpec, template_parts

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


def node_action(node: NodeSpec, graph: Graph, arg_types: dict[str, str]) -> Node:
    parameters: list = [str(graph.config_dir / f) for f in node.parameters]
    bound = {param: _bound_parameter(binding, arg_types) for param, binding in node.argument_parameters}
    if bound:
        parameters.append(bound)
    condition = None
    if node.if_argument:
        condition = IfCondition(LaunchConfiguration(node.if_argument))
    elif node.unless_argument:
        condition = UnlessCondition(LaunchConfiguration(node.unless_argument))
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
    )


def profile_launch_description(profile_name: str) -> LaunchDescription:
    graph = Graph.load(config_dir())
    profile = graph.profile(profile_name)
    arg_types = {a.name: a.type for a in profile.arguments}
    actions: list = [declare_argument(a) for a in profile.arguments]
    actions.append(LogInfo(msg=f"fedvla {profile_name}: {profile.description}"))
    actions.extend(node_action(n, graph, arg_types) for n in profile.nodes)
    return LaunchDescription(actions)
