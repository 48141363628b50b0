"""What every command shares: the console, progress bars, bag tables."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedvla.bag import BagSummary

console = Console()

# What an interrupted resumable command prints (``on_interrupt``; finished work is kept and an
# interrupted run resumes where it stopped): commands whose default output is the same each time...
RESUME_HINT = "run the same command again to go on where it stopped (finished runs are kept)"
# ... and those whose default output is a new dated directory.
RESUME_WITH_OUTPUT_HINT = "run it again with --output set to its run directory to go on where it stopped"


def progress_bar() -> Progress:
    """A counted progress bar (items done of a total) on the console."""
    return Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A right-aligned figures table (the benches print theirs so)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_bag_summary(summary: BagSummary) -> None:
    table = Table(title=f"{summary.path} ({summary.storage}, compression {summary.compression}, "
                        f"{summary.size_bytes / 1e6:.1f} MB, {summary.duration_s:.1f} s)")
    table.add_column("topic")
    table.add_column("type")
    table.add_column("messages", justify="right")
    table.add_column("rate (Hz)", justify="right")
    for t in summary.topics:
        table.add_row(t.name, t.msgtype, str(t.count), f"{t.rate_hz(summary.duration_s):.1f}")
    console.print(table)


def run_ros_tool(executable_name: str, command: str, arguments: list[str]) -> int:
    """Tools that live with the nodes (they need rclpy) run as their installed executables."""
    import signal
    import subprocess

    from fedvla.config import ConfigError
    from fedvla.runner import find_executable

    executable = find_executable("fedvla_ros", executable_name)
    if executable is None:
        raise ConfigError(command, f"fedvla_ros/{executable_name} is not installed", "run .ci/setup first")
    process = subprocess.Popen([str(executable), *arguments])
    try:
        return process.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches the tool too; a SIGINT sent to this process alone must also let
        # the tool stop the graph it started (killing it would orphan the graph's nodes).
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
