"""``fedvla``: the stack's command line for machines with or without the ROS 2 CLI.

    fedvla profiles                          list the launch profiles and their arguments
    fedvla launch sim [name:=value ...]      start a profile's nodes (like ros2 launch)
    fedvla demo                              the main job: run the simulated stack, record it
    fedvla bag info PATH                     topics, types and message counts of a rosbag2
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedvla import topics
from fedvla.bag import BagError, BagSummary, summarize_bag
from fedvla.config import ConfigError
from fedvla.graph import Graph, find_config_dir
from fedvla.runner import ProfileRunner, RunnerError

console = Console()


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ConfigError(item, "is not a launch argument", "name:=value")
        overrides[name] = value
    return overrides


def cmd_profiles(args: argparse.Namespace) -> int:
    graph = Graph.load(args.config_dir or find_config_dir())
    for name in graph.profile_names:
        profile = graph.profile(name)
        console.print(f"[bold]{name}[/bold]: {profile.description}")
        console.print("  nodes: " + ", ".join(n.fully_qualified_name for n in profile.nodes))
        for arg in profile.arguments:
            choices = f" ({'|'.join(arg.choices)})" if arg.choices else ""
            console.print(f"  {arg.name}:={arg.default!r}{choices}  {arg.description}", highlight=False)
    return 0


def run_profile(graph: Graph, profile: str, overrides: dict[str, str], duration_s: float | None,
                title: str) -> None:
    """Run a profile with a progress bar until it ends, fails, or ``duration_s`` elapses."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console) as progress:
        task = progress.add_task(title, total=duration_s, status="starting nodes")
        with ProfileRunner(graph, profile, overrides) as runner:
            for skipped in runner.skipped:
                progress.console.print(f"[yellow]skipping {skipped}")
            status = f"{len(runner.running)} nodes running"

            def tick(elapsed: float) -> None:
                progress.update(task, completed=elapsed if duration_s else None, status=status)

            try:
                runner.wait(duration_s, on_tick=tick)
            except KeyboardInterrupt:
                progress.console.print("interrupted: stopping nodes")
            progress.update(task, status="stopping nodes")
        progress.update(task, completed=duration_s, status="stopped")


def cmd_launch(args: argparse.Namespace) -> int:
    graph = Graph.load(args.config_dir or find_config_dir())
    run_profile(graph, args.profile, parse_overrides(args.arguments), args.duration,
                f"fedvla launch {args.profile}")
    return 0


def print_bag_summary(summary: BagSummary) -> None:
    table = Table(title=f"{summary.path} ({summary.storage}, {summary.duration_s:.1f} s)")
    table.add_column("topic")
    table.add_column("type")
    table.add_column("messages", justify="right")
    table.add_column("rate (Hz)", justify="right")
    for t in summary.topics:
        table.add_row(t.name, t.msgtype, str(t.count), f"{t.rate_hz(summary.duration_s):.1f}")
    console.print(table)


def expected_demo_topics(graph: Graph) -> list[str]:
    """Camera topics of the sim profile's camera nodes (what the demo must have recorded)."""
    return [topics.node_topic(n.spec.fully_qualified_name, rel)
            for n in graph.resolve("sim") if n.spec.executable == "camera_node" for rel in topics.CAMERA_TOPICS]


def cmd_demo(args: argparse.Namespace) -> int:
    graph = Graph.load(args.config_dir or find_config_dir())
    output = Path(args.output or Path("runs") / time.strftime("demo_%Y%m%d_%H%M%S")).resolve()
    console.rule("FedVLA-ROS demo: simulated stack (sim profile), recorded to rosbag2")
    console.print(f"profile sim for {args.duration:g} s → {output}")
    run_profile(graph, "sim", {"record": "true", "record_path": str(output), "launch_rviz": "false"},
                args.duration, "sim profile")
    summary = summarize_bag(output)
    print_bag_summary(summary)
    recorded = {t.name: t.count for t in summary.topics}
    missing = [t for t in expected_demo_topics(graph) if recorded.get(t, 0) == 0]
    if missing:
        console.print(f"[red]no messages on {', '.join(missing)}")
        return 1
    console.print(f"[green]recorded {sum(recorded.values())} messages on {len(recorded)} topics: {output}")
    return 0


def cmd_bag_info(args: argparse.Namespace) -> int:
    print_bag_summary(summarize_bag(args.path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", help="config/ directory with graph.yaml (default: the installed one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("profiles", help="list profiles and launch arguments").set_defaults(func=cmd_profiles)
    launch = sub.add_parser("launch", help="start a profile's nodes (like ros2 launch)")
    launch.add_argument("profile")
    launch.add_argument("arguments", nargs="*", help="launch arguments, name:=value")
    launch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    launch.set_defaults(func=cmd_launch)
    demo = sub.add_parser("demo", help="run the simulated stack and record it to a rosbag2")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds to run (default 15)")
    demo.add_argument("--output", help="rosbag2 directory to write (default runs/demo_<date>_<time>)")
    demo.set_defaults(func=cmd_demo)
    bag = sub.add_parser("bag", help="rosbag2 tools").add_subparsers(dest="bag_command", required=True)
    info = bag.add_parser("info", help="topics and message counts of a rosbag2 directory")
    info.add_argument("path")
    info.set_defaults(func=cmd_bag_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ConfigError, RunnerError, BagError) as err:
        console.print(f"[red]fedvla: error: {err}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
