"""Reading a federation's persisted state for people: progress while it runs, a round table after.

Works from the files alone (``<server state_dir>/state.json``, ``<client>/final/config.json``),
so it can watch a federation started by ``ros2 launch`` on another terminal.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fedvla.federation.state import read_json


def read_server_state(server_dir: Path) -> dict | None:
    try:
        return read_json(server_dir / "state.json")
    except json.JSONDecodeError:
        return None  # never half-written (atomic writes), but a foreign file may be there


class FederationProgress:
    """``done()`` once the server finished and every client wrote its final checkpoint."""

    def __init__(self, server_dir: Path, clients: Sequence[str]) -> None:
        self.server_dir = Path(server_dir)
        self.client_dirs = [self.server_dir.parent / c for c in clients]

    def done(self) -> bool:
        state = read_server_state(self.server_dir)
        return bool(state and state["finished"]) and all((d / "final" / "config.json").is_file() for d in self.client_dirs)

    def describe(self) -> str:
        state = read_server_state(self.server_dir)
        if state is None:
            return "starting the server"
        if state["finished"]:
            return f"all {state['round']} rounds aggregated; clients saving their final checkpoints"
        accepted = ", ".join(sorted(state["accepted"])) or "none yet"
        return f"round {state['round']}: updates from {accepted}; joined {', '.join(state['joined']) or '-'}"


def print_federation_report(console: Console, directory: Path, server_subdir: str = "server") -> None:
    """One row per aggregated round: clients, dropouts, mean EDA weight per client, timing."""
    state = read_server_state(Path(directory) / server_subdir)
    if state is None:
        console.print(f"[yellow]no federation state in {directory}/{server_subdir}")
        return
    table = Table(title=f"federation rounds ({directory})")
    for column in ("round", "aggregation", "clients (mean weight over layers)", "dropped", "closed by", "s"):
        table.add_column(column, justify="right" if column in ("round", "s") else "left")
    for record in state["history"]:
        weights = np.asarray(record["layer_weights"]).mean(axis=0)
        clients = ", ".join(f"{c} {w:.3f}" for c, w in zip(record["clients"], weights))
        aggregation = record["aggregation"] + (" + secagg" if record.get("secure") else "")
        if record.get("attempts", 1) > 1:
            aggregation += f" ({record['attempts']} attempts)"
        if record.get("dp_epsilon"):
            aggregation += f", ε {record['dp_epsilon']:.3g}"
        table.add_row(str(record["round"]), aggregation, clients, ", ".join(record["dropped"]) or "-",
                      record["closed_by"], f"{record['duration_s']:.1f}")
    console.print(table)
    rejected = state.get("rejections") or {}
    if rejected:
        console.print("rejected requests: " + ", ".join(f"{k} × {v}" for k, v in sorted(rejected.items())))


def generate_credentials(client_ids: Sequence[str]) -> str:
    """A credentials file (YAML) with a fresh 256-bit secret per client."""
    lines = ["# fedvla federation credentials: keep out of version control; give each robot only its entry.",
             "clients:"]
    lines += [f"  {client_id}: {secrets.token_hex(32)}" for client_id in client_ids]
    return "\n".join(lines) + "\n"
