"""``fedvla profiles`` and ``fedvla launch``: the profiles of graph.yaml, started like ros2 launch."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fedvla.cli.common import console
from fedvla.graph import Graph, find_config_dir, parse_overrides
from fedvla.runner import ProfileRunner


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
                title: str, *, until: Callable[[], bool] | None = None,
                status: Callable[[], str] | None = None) -> bool:
    """Run a profile with a progress bar until it ends, fails, ``until()`` holds or ``duration_s``
    elapses; returns whether ``until()`` held."""
    with Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console) as progress:
        task = progress.add_task(title, total=None if until else duration_s, status="starting nodes")
        reached = False
        with ProfileRunner(graph, profile, overrides) as runner:
            for skipped in runner.skipped:
                progress.console.print(f"[yellow]skipping {skipped}")
            running = f"{len(runner.running)} nodes running"

            def tick(elapsed: float) -> None:
                starting = runner.waiting_for
                if starting:
                    progress.update(task, status=f"starting nodes: {len(runner.running) - len(starting)}/"
                                    f"{len(runner.running)} up, waiting for {', '.join(starting[:3])}"
                                    + (" ..." if len(starting) > 3 else ""))
                    return
                progress.update(task, completed=elapsed if duration_s and not until else None,
                                status=status() if status else running)

            try:
                reached = runner.wait(duration_s, on_tick=tick, until=until)
            except KeyboardInterrupt:
                progress.console.print("interrupted: stopping nodes")
            progress.update(task, status="stopping nodes")
        progress.update(task, completed=duration_s, status="stopped")
    return reached

def cmd_launch(args: argparse.Namespace) -> int:
    graph = Graph.load(args.config_dir or find_config_dir())
    run_profile(graph, args.profile, parse_overrides(args.arguments), args.duration,
                f"fedvla launch {args.profile}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    commands.add_parser("profiles", help="list profiles and launch arguments").set_defaults(func=cmd_profiles)
    launch = commands.add_parser("launch", help="start a profile's nodes (like ros2 launch)")
    launch.add_argument("profile")
    launch.add_argument("arguments", nargs="*", help="launch arguments, name:=value")
    launch.add_argument("--duration", type=float, default=None, help="stop after this many seconds, counted once every node is up")
    launch.set_defaults(func=cmd_launch)
