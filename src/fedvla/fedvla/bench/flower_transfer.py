"""``fedvla bench transfer``'s Flower path: one update's bytes through a Flower Deployment Engine on
loopback (a SuperLink with TLS and SuperNode authentication, one SuperNode per client), as robots
at other sites would send it.

The ServerApp sends every SuperNode a trunk-sized ArrayRecord (the global trunk's fetch) and each
ClientApp answers with one of the same size (its update's upload); the ClientApp stamps when the
global one arrived and when it replied, so fetch and upload are timed apart (one clock: one
machine). The bench writes a throwaway Flower App whose components are this module's
:data:`server_app` and :data:`client_app`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
[project]
name = "fedvla-transfer-bench"
version = "0.1.0"
description = "fedvla bench transfer: one update through Flower"
license = "Apache-2.0"
dependencies = ["flwr"]
[tool.hatch.build.targets.wheel]
packages = ["."]
[tool.flwr.app]
publisher = "fedvla"
[tool.flwr.app.components]
serverapp = "fedvla.bench.flower_transfer:server_app"
clientapp = "fedvla.bench.flower_transfer:client_app"
[tool.flwr.app.config]
size-bytes = 1000000
clients = 1
result = "transfer.json"
"""

client_app = ClientApp()


@client_app.train()
def echo(msg: Message, context: Context) -> Message:
    received = time.time()
    size = sum(a.numpy().nbytes for a in msg.content["arrays"].values())
    update = np.random.default_rng(0).standard_normal(size // 4, dtype=np.float32)  # the update's bytes, fresh
    return Message(RecordDict({"arrays": ArrayRecord([update]),
                               "metrics": MetricRecord({"received": received, "replied": time.time()})}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from flwr.app import MessageType

    config = context.run_config
    size, clients = int(config["size-bytes"]), int(config["clients"])
    deadline = time.monotonic() + 300
    while len(nodes := sorted(grid.get_node_ids())) < clients and time.monotonic() < deadline:
        time.sleep(0.5)
    trunk = ArrayRecord([np.random.default_rng(1).standard_normal(size // 4, dtype=np.float32)])
    messages = [Message(RecordDict({"arrays": trunk, "config": ConfigRecord({})}), dst_node_id=node,
                        message_type=MessageType.TRAIN) for node in nodes[:clients]]
    sent = time.time()
    replies = list(grid.send_and_receive(messages))
    done = time.time()
    stamps = [(r.content["metrics"]["received"], r.content["metrics"]["replied"]) for r in replies if not r.has_error()]
    Path(str(config["result"])).write_text(json.dumps({
        "bytes_per_client": size, "clients": len(stamps), "sent": sent, "done": done,
        "fetch_s": max(received for received, _ in stamps) - sent,
        "upload_s": done - min(replied for _, replied in stamps)}))


def flower_transfer(size_bytes: int, clients: int, work: Path) -> dict:
    """Seconds to fetch and upload ``size_bytes`` per client through a TLS SuperLink and ``clients``
    authenticated SuperNodes on loopback; MB/s over all clients."""
    from fedvla.app.flower_local import (Processes, flower_env, flwr, free_port, register_supernode, run_config,
                                         start_supernode, start_tls_superlink, write_connection)
    from fedvla.federation.flower_credentials import make_flower_credentials

    work.mkdir(parents=True, exist_ok=True)
    app = work / "app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(APP_TOML)
    nodes = [f"bench_{i}" for i in range(clients)]
    credentials = make_flower_credentials(work / "credentials", ["127.0.0.1"], nodes)
    env = flower_env(work / "home")
    port = free_port()
    write_connection(work / "home", "bench", port, credentials.ca_certificate)
    with Processes(work / "logs", env) as processes:
        start_tls_superlink(processes, credentials, port)
        for node in nodes:
            register_supernode(env, credentials, node, "bench")
            start_supernode(processes, credentials, node, port)
        result = work / "transfer.json"
        run = flwr(env, "run", str(app), "bench", "--stream", "-c",
                   run_config({"size-bytes": size_bytes, "clients": clients, "result": str(result)}), timeout_s=900)
        if run.returncode != 0 or not result.exists():
            raise RuntimeError(f"the Flower transfer run failed: {run.stdout[-2000:]}{run.stderr[-2000:]}"
                               f"{processes.log('superlink')[-2000:]}")
    figures = json.loads(result.read_text())
    total = figures["bytes_per_client"] * figures["clients"]
    return {**figures, "fetch_mb_s": total / figures["fetch_s"] / 1e6, "upload_mb_s": total / figures["upload_s"] / 1e6}
