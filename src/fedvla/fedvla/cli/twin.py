"""``fedvla twin ...``: the workcell twin of the paper's real-world cell (:mod:`fedvla.twin`)."""
from __future__ import annotations

import argparse

from fedvla.cli.common import run_ros_tool


def cmd_twin_demos(args: argparse.Namespace) -> int:
    return run_ros_tool("twin_demos", "twin demos", args.bench_arguments)


def cmd_twin_evaluate(args: argparse.Namespace) -> int:
    return run_ros_tool("twin_evaluate", "twin evaluate", args.bench_arguments)


def register(commands: argparse._SubParsersAction) -> None:
    twin = commands.add_parser("twin", help="the workcell twin").add_subparsers(dest="twin_command", required=True)
    demos = twin.add_parser("demos", help="expert demonstrations through the graph, recorded and imported as "
                            "datasets (options: those of twin_demos; --help lists them)", add_help=False)
    demos.set_defaults(func=cmd_twin_demos, passes_options=True)
    evaluate = twin.add_parser("evaluate", help="closed-loop trials of a checkpoint through the graph, recorded, "
                               "with Wilson intervals and the in-process cross-check (options: those of twin_evaluate; "
                               "--help lists them)", add_help=False)
    evaluate.set_defaults(func=cmd_twin_evaluate, passes_options=True)
