"""Transfer benchmark of the federation over ROS 2 services (``fedvla bench transfer``).

One fed_server process and N uploader processes on localhost: each uploader joins, fetches the
global trunk and uploads one update of the configured model (HPT-Base-like by default) through
the same :class:`fedvla_ros.federation_transport.RosServerApi` the fed_client node uses. Printed next to
it: the same bytes over plain loopback TCP (N concurrent streams) measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

CHUNK_SIZES_MIB = (1, 4, 16)


def tcp_loopback_seconds(size: int, streams: int) -> float:
    """Wall time to push ``size`` bytes over each of ``streams`` concurrent loopback connections."""
    payload = os.urandom(size)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def receive() -> None:
        conn, _ = listener.accept()
        with conn:
            left = size
            while left:
                data = conn.recv(min(left, 4 << 20))
                if not data:
                    break
                left -= len(data)

    receivers = [threading.Thread(target=receive) for _ in range(streams)]
    for r in receivers:
        r.start()
    start = time.perf_counter()
    senders = []
    for _ in range(streams):
        def send() -> None:
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(payload)
        senders.append(threading.Thread(target=send))
        senders[-1].start()
    for t in senders + receivers:
        t.join()
    listener.close()
    return time.perf_counter() - start


def uploader(args: argparse.Namespace) -> int:
    """One client process: join, fetch, upload one update; prints a JSON line of timings."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from fedvla.federation.client import FederationClient, FederationClientConfig, trunk_spec
    from fedvla.federation.round_client import send_chunks
    from fedvla.app.federation import trunk_policy
    from fedvla.federation.wire import TrunkUpdate, encode_update, sha256_hex, sign_upload
    from fedvla_ros.federation_transport import RosServerApi

    rclpy.init()
    node = rclpy.create_node(f"bench_{args.client_id}")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    policy = trunk_policy(args.model_config, 0)
    api = RosServerApi(node, timeout_s=120.0, chunks_in_flight=args.in_flight)
    client = FederationClient(FederationClientConfig(client_id=args.client_id, state_dir=args.state_dir),
                              args.secret, policy, [], None, api)
    client.join()
    status = api.status()
    start = time.time()
    trunk, fetched = client.fetch_global(status)
    fetch_end = time.time()
    g = torch.Generator().manual_seed(hash(args.client_id) % 2**31)
    local = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in trunk.items()}
    spec = trunk_spec(policy)
    update = TrunkUpdate(client_id=args.client_id, round=status.round, trunk=local,
                         expert_counts=torch.ones(spec.num_layers, spec.num_experts, dtype=torch.int64), num_samples=1)
    blob = encode_update(update, spec, args.dtype, base=trunk)
    # The steps of FederationClient.upload, timed apart: the chunks are the transfer; the commit is
    # the server's validation and durable (fsynced) write of the update.
    signature = sign_upload(args.secret, args.client_id, status.round, blob)
    upload_start = time.time()
    begun = api.begin_upload(args.client_id, status.round, len(blob), sha256_hex(blob), signature)
    view = memoryview(blob)
    chunks = [(i, view[i * begun.chunk_size: (i + 1) * begun.chunk_size]) for i in range(begun.num_chunks)]
    replies = send_chunks(api, begun.upload_id, chunks)
    upload_end = time.time()
    committed = api.commit_upload(begun.upload_id)
    commit_end = time.time()
    if not (begun.ok and all(r.ok for r in replies) and committed.ok):
        raise SystemExit(f"upload refused: {begun.reason} {committed.reason} {committed.detail}")
    print(json.dumps({"client": args.client_id, "fetch_bytes": fetched, "fetch_start": start, "fetch_end": fetch_end,
                      "upload_bytes": len(blob), "upload_start": upload_start, "upload_end": upload_end,
                      "commit_end": commit_end}), flush=True)
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def _run_round(args: argparse.Namespace, chunk_size: int, work: Path) -> dict:
    from fedvla.runner import find_executable

    secrets = {f"bench_{i}": f"benchmark-secret-{i:04d}-0123456789" for i in range(args.clients)}
    credentials = work / f"credentials_{chunk_size}.yaml"
    credentials.write_text("clients:\n" + "".join(f"  {k}: {v}\n" for k, v in secrets.items()))
    server_exe = find_executable("fedvla_ros", "fed_server")
    if server_exe is None:
        raise SystemExit("fedvla_ros/fed_server is not installed: run .ci/setup")
    server = subprocess.Popen([str(server_exe), "--ros-args", "-p", f"model_config:={args.model_config}",
                               "-p", f"credentials_file:={credentials}", "-p", f"state_dir:={work / f'server_{chunk_size}'}",
                               "-p", "rounds:=1", "-p", f"quorum:={args.clients}", "-p", f"chunk_size:={chunk_size}",
                               "-p", f"max_fetch_bytes:={max(chunk_size, 64 << 20)}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        uploaders = [subprocess.Popen([sys.executable, "-m", "fedvla_ros.tools.federation_bench", "--uploader",
                                       "--client-id", cid, "--secret", secret, "--model-config", args.model_config,
                                       "--dtype", args.dtype, "--in-flight", str(args.in_flight),
                                       "--state-dir", str(work / f"{cid}_{chunk_size}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for cid, secret in secrets.items()]
        results = []
        for process in uploaders:
            out, err = process.communicate(timeout=600)
            if process.returncode != 0:
                raise SystemExit(f"uploader failed: {err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        server.terminate()
        server.communicate(timeout=30)
    upload_bytes = sum(r["upload_bytes"] for r in results)
    upload_wall = max(r["upload_end"] for r in results) - min(r["upload_start"] for r in results)
    fetch_bytes = sum(r["fetch_bytes"] for r in results)
    fetch_wall = max(r["fetch_end"] for r in results) - min(r["fetch_start"] for r in results)
    commit_wall = max(r["commit_end"] for r in results) - min(r["upload_start"] for r in results)
    return {"chunk_mib": chunk_size >> 20, "upload_mb_s": upload_bytes / upload_wall / 1e6,
            "fetch_mb_s": fetch_bytes / fetch_wall / 1e6, "update_mb": results[0]["upload_bytes"] / 1e6,
            "upload_s": upload_wall, "committed_s": commit_wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default="model/hpt_base.yaml")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--dtype", default="float32", help="upload dtype (float32, bfloat16, float16, int8_delta)")
    parser.add_argument("--in-flight", type=int, default=4, help="upload chunks in flight per client")
    parser.add_argument("--chunk-mib", type=int, nargs="+", default=list(CHUNK_SIZES_MIB))
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower path (a TLS SuperLink and one "
                        "SuperNode per client on loopback)")
    parser.add_argument("--uploader", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from fedvla.dds import federation_transport_environment

    # The federation's transport (fedvla.dds) for this process and, inherited, the server and uploaders.
    transport = federation_transport_environment()
    if args.uploader:
        return uploader(args)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(transport.summary)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedvla_transfer_") as tmp:
        for mib in args.chunk_mib:
            console.print(f"round with {args.clients} uploader processes, chunks of {mib} MiB ...")
            rows.append(_run_round(args, mib << 20, Path(tmp)))
        size = int(rows[0]["update_mb"] * 1e6)
        flower = None
        if not args.no_flower:
            from fedvla.bench.flower_transfer import flower_transfer

            console.print(f"the same update through Flower: a TLS SuperLink and {args.clients} SuperNodes ...")
            flower = flower_transfer(size, args.clients, Path(tmp) / "flower")
    tcp_s = min(tcp_loopback_seconds(size, args.clients) for _ in range(3))
    table = Table(title=f"federation transfer on localhost: {args.clients} clients × {rows[0]['update_mb']:.1f} MB "
                        f"updates ({args.model_config}, {args.dtype}), {args.in_flight} chunks in flight")
    for column in ("path", "chunk", "upload MB/s (all clients)", "fetch MB/s (all clients)", "chunks sent (s)",
                   "+ validated, persisted (s)"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row("ROS 2 services", f"{r['chunk_mib']} MiB", f"{r['upload_mb_s']:.0f}", f"{r['fetch_mb_s']:.0f}",
                      f"{r['upload_s']:.2f}", f"{r['committed_s']:.2f}")
    if flower is not None:
        table.add_row("Flower 1.41 (TLS, SuperNode auth)", "-", f"{flower['upload_mb_s']:.0f}",
                      f"{flower['fetch_mb_s']:.0f}", f"{flower['upload_s']:.2f}", "-")
    table.add_row("loopback TCP", "-", f"{args.clients * size / tcp_s / 1e6:.0f}", "-", f"{tcp_s:.2f}", "-")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
