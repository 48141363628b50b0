"""``fedvla bench ...`` and ``fedvla soak``: measurements that print figures (the work is in
:mod:`fedvla.bench`; the ROS transfer and soak tools run as the fedvla_ros executables)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from rich.table import Table

from fedvla.cli.common import RESUME_WITH_OUTPUT_HINT, console, print_table, run_ros_tool
from fedvla.graph import find_config_dir
from fedvla.model.step_backend import StepBackend


def cmd_bench_policy(args: argparse.Namespace) -> int:
    import torch

    from fedvla.bench.model import matmul_gflops, run_policy_bench, trunk_ratio_floor
    from fedvla.model.config import PolicyConfig
    from fedvla.model.moe import FeedForwardKind

    if args.threads:
        torch.set_num_threads(args.threads)
    model_config = args.model_config or find_config_dir() / "model" / "hpt_small.yaml"
    config = PolicyConfig.from_yaml(model_config, proprio_dim=args.proprio_dim, action_dim=args.action_dim)
    kinds = [FeedForwardKind(k) for k in args.kinds]
    console.print(f"policy bench: {model_config} ({config.num_blocks} blocks, width {config.embed_dim}, "
                  f"{config.num_experts} experts, {len(config.camera_names)} cameras {config.image_size}px, "
                  f"batch 1), torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    backends = tuple(StepBackend(b) for b in args.backends)
    figures = run_policy_bench(config, kinds, repeats=args.repeats, train_epochs=args.train_epochs, batch=args.batch,
                               backends=backends, backend_kinds=tuple(FeedForwardKind(k) for k in args.backend_kinds))
    table = Table(title="policy step and trunk latency (CPU unless CUDA is present)")
    for column in ("feed-forward", "step median (ms)", "step p90 (ms)", "trunk median (ms)",
                   "experts/token untrained", "experts/token trained"):
        table.add_column(column, justify="right")
    for f in figures:
        table.add_row(f.kind.value, f"{f.step_median_ms:.2f}", f"{f.step_p90_ms:.2f}", f"{f.trunk_median_ms:.2f}",
                      f"{f.experts_per_token_untrained:.3f}", f"{f.experts_per_token:.3f}")
    console.print(table)
    throughput = matmul_gflops()
    table = Table(title="where a step's time goes (batch 1, median ms)",
                  caption="attn: the trunk's attention and norms; ffn: its feed-forward layers; head: head and "
                          "the rest; GFLOP: one step's work")
    for column in ("kind", "stems", "attn", "ffn", "head", "GFLOP", "GFLOP/s",
                   f"trunk B={args.batch}"):
        table.add_column(column, justify="right")
    for f in figures:
        head = f.step_median_ms - f.stems_median_ms - f.trunk_median_ms
        table.add_row(f.kind.value, f"{f.stems_median_ms:.2f}", f"{f.trunk_rest_ms:.2f}", f"{f.feed_forward_median_ms:.2f}",
                      f"{head:.2f}", f"{f.step_gflop:.3f}", f"{f.step_gflop / f.step_median_ms * 1000:.1f}",
                      f"{f.trunk_batch_median_ms:.1f}" if f.trunk_batch_ms else "-")
    console.print(table)
    console.print(f"this machine's float32 matmul throughput (1024x1024, {torch.get_num_threads()} threads): "
                  f"{throughput:.0f} GFLOP/s")
    for f in figures:
        if f.backends:
            print_backends(f)
    by_kind = {f.kind: f for f in figures}
    if FeedForwardKind.DENSE in by_kind:
        dense = by_kind[FeedForwardKind.DENSE]
        console.print(f"dense step {dense.step_median_ms:.2f} ms is the floor for every MoE kind on this machine "
                      f"(each does at least the dense FFN's work per token, plus routing; step target <= 8 ms); "
                      f"its arithmetic alone would take {dense.step_gflop / throughput * 1000:.2f} ms at the matmul "
                      f"throughput")
    if FeedForwardKind.DGMOE in by_kind and FeedForwardKind.TOPK in by_kind:
        dgmoe, topk = by_kind[FeedForwardKind.DGMOE], by_kind[FeedForwardKind.TOPK]
        console.print(f"trunk time DGMoE / top-2: {dgmoe.trunk_median_ms / topk.trunk_median_ms:.2f} (target <= 0.7)"
                      + (f"; at batch {args.batch}: {dgmoe.trunk_batch_median_ms / topk.trunk_batch_median_ms:.2f}"
                         if dgmoe.trunk_batch_ms and topk.trunk_batch_ms else ""))
        console.print(f"feed-forward time DGMoE / top-2 at batch 1: "
                      f"{dgmoe.feed_forward_median_ms / topk.feed_forward_median_ms:.2f}; expert pairs per token "
                      f"{dgmoe.experts_per_token:.2f} / {topk.experts_per_token:.2f} = "
                      f"{dgmoe.experts_per_token / topk.experts_per_token:.2f}; trunk ratio floor if feed-forward time "
                      f"scaled with pairs (attention and norms unchanged): {trunk_ratio_floor(dgmoe, topk):.2f}")
    if FeedForwardKind.DGMOE in by_kind and FeedForwardKind.DENSE in by_kind:
        for line in step_goal_lines(by_kind[FeedForwardKind.DGMOE], by_kind[FeedForwardKind.DENSE], throughput):
            console.print(line)
    return 0


def step_goal_lines(dgmoe, dense, matmul_gflops: float) -> list[str]:
    """The DGMoE step against its goals: the arithmetic floor (its FLOPs at this machine's sgemm
    throughput), the dense feed-forward scaled by expert pairs per token, and the dense step."""
    floor_ms = dgmoe.step_gflop / matmul_gflops * 1000
    scaled_ffn_ms = dense.feed_forward_median_ms * dgmoe.experts_per_token
    fastest = min((b for b in dgmoe.backends if b.step_ms), key=lambda b: b.step_median_ms, default=None)
    lines = [f"DGMoE step {dgmoe.step_median_ms:.2f} ms = {dgmoe.step_median_ms / floor_ms:.1f}x its arithmetic floor "
             f"({dgmoe.step_gflop:.3f} GFLOP at {matmul_gflops:.0f} GFLOP/s = {floor_ms:.2f} ms; goal <= 3x)",
             f"DGMoE feed-forward {dgmoe.feed_forward_median_ms:.2f} ms = "
             f"{dgmoe.feed_forward_median_ms / scaled_ffn_ms:.2f}x the dense feed-forward x expert pairs per token "
             f"({dense.feed_forward_median_ms:.2f} ms x {dgmoe.experts_per_token:.2f} = {scaled_ffn_ms:.2f} ms; goal <= 1.2x)",
             f"DGMoE step / dense step: {dgmoe.step_median_ms / dense.step_median_ms:.2f} (goal <= 1.2)"]
    if fastest is not None:
        lines.append(f"fastest DGMoE backend here: {fastest.name}, {fastest.step_median_ms:.2f} ms = "
                     f"{fastest.step_median_ms / floor_ms:.1f}x the floor, {fastest.step_median_ms / dense.step_median_ms:.2f}x "
                     f"the eager dense step")
    lines.append(f"absolute goal (a GPU or a many-core robot PC): <= 8 ms per step; here {dgmoe.step_median_ms:.2f} ms eager")
    return lines

def print_backends(figures) -> None:
    """The step on each backend (fedvla.model.acceleration) against eager, for one trained kind."""
    eager = next((b for b in figures.backends if b.name == "eager" and b.step_ms), None)
    table = Table(title=f"{figures.kind.value} step per backend (batch 1; trained policy)",
                  caption="difference: largest |action chunk - eager's| (normalised units; the backends must "
                          "stay within 1e-5); build: conversion and the first, compiling, step")
    for column in ("backend", "step median (ms)", "vs eager", "build (s)", "difference"):
        table.add_column(column, justify="right")
    for b in figures.backends:
        if b.error:
            table.add_row(b.name, "-", "-", "-", b.error)
            continue
        ratio = f"{b.step_median_ms / eager.step_median_ms:.2f}x" if eager else "-"
        table.add_row(b.name, f"{b.step_median_ms:.2f}", ratio, f"{b.build_s:.1f}" if b.build_s else "-",
                      f"{b.max_abs_difference:.1e}")
    console.print(table)


def cmd_bench_federation(args: argparse.Namespace) -> int:
    import torch

    from fedvla.bench.federation import bench_aggregation, upload_size

    if args.threads:
        torch.set_num_threads(args.threads)
    config_dir = Path(args.config_dir) if args.config_dir else find_config_dir()
    table = Table(title="bytes one client uploads per round (trunk + expert counts) vs the whole fp32 model")
    for column in ("model", "model params", "trunk params", "full fp32 MB", "float32 MB", "bfloat16 MB",
                   "int8_delta MB", "saving bf16", "saving int8_delta"):
        table.add_column(column, justify="right")
    for name in args.model_configs:
        size = upload_size(str(config_dir / "model" / f"{name}.yaml"))
        table.add_row(name, f"{size.model_parameters / 1e6:.2f} M", f"{size.trunk_parameters / 1e6:.2f} M",
                      f"{size.full_model_fp32_bytes / 1e6:.1f}", f"{size.upload_bytes['float32'] / 1e6:.1f}",
                      f"{size.upload_bytes['bfloat16'] / 1e6:.1f}", f"{size.upload_bytes['int8_delta'] / 1e6:.1f}",
                      f"{100 * size.saving('bfloat16'):.0f} %", f"{100 * size.saving('int8_delta'):.0f} %")
    console.print(table)
    parameters = int(args.parameters)
    console.print(f"EDA aggregation of a {parameters / 1e6:.0f} M-parameter trunk (16 layers × 8 experts), "
                  f"torch threads {torch.get_num_threads()}")
    figures = bench_aggregation(parameters, args.clients, repeats=args.repeats)
    table = Table(title="EDA aggregation time (weights + weighted sum, fp32 trunks)")
    for column in ("clients", "median (s)", "min (s)", "per client (s)"):
        table.add_column(column, justify="right")
    for f in figures:
        table.add_row(str(f.clients), f"{f.median_s:.3f}", f"{min(f.seconds):.3f}", f"{f.median_s / f.clients:.3f}")
    console.print(table)
    return 0

def cmd_bench_secagg(args: argparse.Namespace) -> int:
    import torch

    from fedvla.bench.federation import bench_count_privacy, bench_secure_aggregation

    if args.threads:
        torch.set_num_threads(args.threads)
    config_dir = Path(args.config_dir) if args.config_dir else find_config_dir()
    model = str(config_dir / "model" / f"{args.model_config}.yaml")
    figures = bench_secure_aggregation(model, args.clients, dropped=args.dropped)
    table = Table(title=f"secure EDA (SecAgg) vs plaintext EDA per round: {args.model_config} trunk "
                  f"({figures[0].trunk_parameters / 1e6:.2f} M parameters), {args.dropped} client(s) dropped "
                  "after sharing keys, threshold n/2 + 1")
    for column in ("clients", "plaintext EDA (s)", "secure: per client (s)", "secure: server (s)",
                   "server overhead", "upload MB (secure / plain)", "max |error|"):
        table.add_column(column, justify="right")
    for f in figures:
        table.add_row(str(f.clients), f"{f.plaintext_s:.3f}", f"{f.client_s:.3f}", f"{f.server_s:.3f}",
                      f"{f.server_s / f.plaintext_s:.1f}x", f"{f.upload_bytes / 1e6:.1f} / {f.plaintext_upload_bytes / 1e6:.1f}",
                      f"{f.max_error:.1e}")
    console.print(table)
    num_layers, num_experts = figures[0].num_layers, figures[0].num_experts
    privacy = bench_count_privacy(num_layers, num_experts, args.clients[0], [0.01, 0.05, 0.2])
    table = Table(title=f"what count_privacy costs EDA: weight error vs exact counts ({args.clients[0]} non-iid "
                  f"clients, {num_layers} layers x {num_experts} experts, 200 draws)")
    for column in ("count_privacy", "noise std", "mean |Δw|", "max |Δw|"):
        table.add_column(column, justify="right")
    for f in privacy:
        table.add_row(f.privacy, f"{f.noise_std:g}", f"{f.mean_weight_error:.1e}", f"{f.max_weight_error:.1e}")
    console.print(table)
    return 0

def cmd_bench_transfer(args: argparse.Namespace) -> int:
    return run_ros_tool("federation_bench", "bench transfer", args.bench_arguments)

def cmd_soak(args: argparse.Namespace) -> int:
    return run_ros_tool("federation_soak", "soak", args.bench_arguments)

def cmd_bench_iosp(args: argparse.Namespace) -> int:
    from fedvla.bench.iosp import bench_iosp

    console.print(f"IOSP per frame, offline defaults (simulator segmentation, rule-based targets, box/mask "
                  f"tokens), {args.task}, {args.frames} frames; cache: detector every {args.every_n} frames")
    figures = bench_iosp(args.task, args.instruction, frames=args.frames, every_n=args.every_n)
    table = Table(title="IOSP latency per frame (all cameras), CPU")
    for column in ("setting", "cache", "detect (ms)", "group (ms)", "select (ms)", "total median (ms)",
                   "total mean (ms)", "frames/s"):
        table.add_column(column, justify="right")
    for f in figures:
        table.add_row(f.setting, "on" if f.cached else "off", f"{f.stage_ms['detect']:.2f}", f"{f.stage_ms['group']:.2f}",
                      f"{f.stage_ms['select']:.2f}", f"{f.total_ms:.2f}", f"{f.total_mean_ms:.2f}", f"{f.rate_hz:.0f}")
    console.print(table)
    console.print("goal: >= 15 frames/s camera -> tokens")
    return 0

def cmd_bench_ik(args: argparse.Namespace) -> int:
    import numpy as np

    from fedvla.bench.robot import bench_ik

    console.print(f"IK on the UR3 (urdf/ur3_gripper.urdf, tool frame tcp): {args.tracking_steps} tracking solves "
                  f"({args.step:g} rad steps), {args.targets} random reachable targets from home")
    figures = bench_ik(targets=args.targets, tracking_steps=args.tracking_steps, step_rad=args.step)
    table = Table(title="damped least squares IK with posture prior (one CPU thread)")
    for column in ("setting", "converged", "median (ms)", "p90 (ms)", "max (ms)", "median iterations"):
        table.add_column(column, justify="right")
    for f in figures:
        table.add_row(f.setting, f"{f.converged}/{f.solves} ({100 * f.rate:.1f} %)", f"{f.percentile_ms(50):.3f}",
                      f"{f.percentile_ms(90):.3f}", f"{max(f.milliseconds):.3f}", f"{np.median(f.iterations):.0f}")
    console.print(table)
    console.print("goals: median <= 1 ms when tracking; >= 99 % converged from home")
    return 0


def cmd_bench_twin(args: argparse.Namespace) -> int:
    import json
    import shlex
    import sys
    import time
    from pathlib import Path

    from fedvla.bench.twin import bench_real_time, demonstrations_per_minute
    from fedvla.paths import run_directory, working_tree_commit
    from fedvla.sim.report import machine

    output = Path(args.output or run_directory("twin_bench")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    console.print(f"workcell twin: physics (125 Hz controller cycle, its own process) with the D435i rendered here at "
                  f"{args.fps:g} fps (colour + depth, 640x480), {args.seconds:g} s, task {args.task}")
    figures = bench_real_time(seconds=args.seconds, fps=args.fps, task=args.task)
    record = {"command": shlex.join(["fedvla", *sys.argv[1:]]), "commit": working_tree_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(), "task": args.task, "seconds": args.seconds, "target_fps": args.fps,
              "real_time_factor": figures.real_time_factor, "camera_fps": figures.camera_fps}
    table = Table(title="the twin on this machine")
    for column in ("figure", "value", "goal"):
        table.add_column(column, justify="right")
    table.add_row("real-time factor (sim s / wall s)", f"{figures.real_time_factor:.3f}", ">= 1.0")
    table.add_row("camera frames per second", f"{figures.camera_fps:.1f}", f"{args.fps:g} (D435i: 30)")
    if args.demos:
        per_minute, count = demonstrations_per_minute(Path(args.demos))
        record["demonstrations_per_minute"] = {"value": per_minute, "demonstrations": count, "run": args.demos}
        table.add_row(f"expert demonstrations per minute ({count} in {args.demos})", f"{per_minute:.2f}", "-")
    if args.checkpoint:
        from fedvla.cli.common import run_ros_tool

        console.print(f"end-to-end latency: the policy drives the twin through the graph for {args.latency_seconds:g} s "
                      f"(camera at {args.fps:g} fps); its processes' output in {output / 'graph.log'}")
        status = run_ros_tool("twin_latency", "bench twin", [
            "--checkpoint", args.checkpoint, "--task", args.task, "--seconds", str(args.latency_seconds),
            "--fps", str(args.fps), "--output", str(output), *(["--detector", args.detector] if args.detector else [])])
        if status != 0:
            return status
        latency = json.loads((output / "latency.json").read_text())
        record["latency"] = latency
        from fedvla.twin.results import LATENCY_FIGURES

        for name, key, goal in LATENCY_FIGURES:
            part = latency[key]
            table.add_row(f"{name}, p50 / p95 ms ({part.get('chunks', part.get('n', 0))} chunks)",
                          f"{part.get('p50', float('nan')):.1f} / {part.get('p95', float('nan')):.1f}", goal)
    (output / "bench.json").write_text(json.dumps(record, indent=1))
    console.print(table)
    if not args.checkpoint:
        console.print("end-to-end latency: give --checkpoint (a policy trained on twin demonstrations) to measure it")
    console.print(f"figures: {output / 'bench.json'}")
    return 0


def cmd_bench_realtime(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import shlex
    import sys
    import time
    from pathlib import Path

    from fedvla.bench.chunk_replay import plot_boundaries
    from fedvla.bench.realtime import (chosen_aggregator, complete_run, condition_names, launch_arguments, plot,
                                       read_run, replay_runs, report_markdown, run_name, shared_launch_arguments)
    from fedvla.cli.common import run_ros_tool
    from fedvla.paths import run_directory, working_tree_commit
    from fedvla.sim.report import machine
    from fedvla.twin.evaluation import checkpoint_action_space

    extra = shared_launch_arguments(args.launch_argument)
    output = Path(args.output or run_directory("realtime_bench")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((output / "bench.json").read_text()) if (output / "bench.json").is_file() else {}
    commit = working_tree_commit()
    conditions = args.conditions or condition_names()
    rows, reused = [], {}
    for latency in args.latencies:
        for condition in conditions:
            name = run_name(condition, latency)
            run = output / name
            arguments = {**extra, **launch_arguments(condition, latency)}
            if complete_run(run / "evaluation.json", args.task, args.trials, arguments):
                console.print(f"{name}: its {args.trials} trials are done (read back, not run again)")
                reused[name] = (earlier.get("reused_runs") or {}).get(name) or earlier.get("commit")
            else:
                console.rule(f"{condition}, {1000 * latency:g} ms injected latency: {args.trials} trials of {args.task}")
                status = run_ros_tool("twin_evaluate", "bench realtime", [
                    "--checkpoint", args.checkpoint, "--task", args.task, "--trials", str(args.trials),
                    "--max-steps", str(args.max_steps), "--no-in-process", "--output", str(run),
                    *[f"--launch-argument={k}:={v}" for k, v in arguments.items()]])
                if status != 0:
                    return status
            rows.append(read_run(run / "evaluation.json", condition, latency, args.task))
    table = Table(title=f"chunk execution in the twin ({args.task}, {args.trials} trials per row)")
    for column in ("condition", "latency ms", "success", "Wilson 95 %", "time to success s", "setpoint jerk RMS rad/s^3",
                   "largest reference jump mrad", "queue ran dry", "late actions"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.condition, f"{1000 * r.latency_s:g}", f"{r.successes}/{r.trials}",
                      f"{100 * r.wilson95[0]:.0f}-{100 * r.wilson95[1]:.0f} %",
                      "-" if r.time_to_success_s is None else f"{r.time_to_success_s:.2f}", f"{r.setpoint_jerk_rms:.1f}",
                      f"{r.largest_reference_jump_mrad:.2f}", str(r.queue_ran_dry), str(r.late_actions))
    console.print(table)
    plot(rows, output / "realtime.png")
    with console.status("replaying every async trial's chunks with each aggregator"):
        replays = replay_runs(output, rows, args.task, checkpoint_action_space(args.checkpoint),
                              progress=lambda message: console.print(message))
    if replays is not None:
        plotted = replays.plotted
        plot_boundaries(replays.plotted_replays, output / "boundaries.png",
                        f"{Path(plotted['bag']).name} ({plotted['condition']}, {1000 * plotted['latency_s']:g} ms): "
                        f"its {plotted['chunks']} chunks replayed with each aggregator")
        replay_table = Table(title="every async trial's chunks through the driver's controller, per aggregator "
                                   "(simulated time)")
        for column in ("latency ms", "aggregator", "trials", "overlapping hand-overs", "merges",
                       "jerk RMS rad/s^3", "largest jump mrad (median)", "refused"):
            replay_table.add_column(column, justify="right")
        for r in replays.summaries:
            replay_table.add_row(f"{1000 * r['latency_s']:g}", r["aggregator"], str(r["trials"]),
                                 str(r["overlapping_hand_overs"]), str(r["merges"]), f"{r['setpoint_jerk_rms']:.1f}",
                                 f"{r['largest_reference_jump_mrad']:.1f}", str(sum(r["refused"].values())))
        console.print(replay_table)
    choice = chosen_aggregator(rows)
    if choice is not None:
        console.print(f"default aggregator by closed-loop success: [bold]{choice.chosen}[/] ("
                      + ", ".join(f"{a} {n}/{t}" for a, (n, t) in choice.successes.items()) + ")")
    record = {"command": shlex.join(["fedvla", *sys.argv[1:]]), "commit": commit,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "checkpoint": args.checkpoint,
              "task": args.task, "trials": args.trials, "launch_arguments": extra,
              "rows": [dataclasses.asdict(r) for r in rows],
              "reused_runs": reused,
              "replays": None if replays is None else {"summaries": replays.summaries, "plotted": replays.plotted},
              "choice": None if choice is None else dataclasses.asdict(choice)}
    (output / "bench.json").write_text(json.dumps(record, indent=1, default=list))
    (output / "realtime.md").write_text(report_markdown(json.loads((output / "bench.json").read_text())))
    console.print(f"figures: {output / 'bench.json'}, table: {output / 'realtime.md'}, plot: {output / 'realtime.png'}")
    return 0


def cmd_bench_bag(args: argparse.Namespace) -> int:
    import json
    import shlex
    import sys
    import time

    from fedvla.bench.bag_storage import recording_summary, saving, storage_figures
    from fedvla.cli.launch import run_profile
    from fedvla.graph import Graph
    from fedvla.paths import run_directory, working_tree_commit
    from fedvla.sim.report import machine

    output = Path(args.output or run_directory("bag_bench")).resolve()
    recording = Path(args.bag).resolve() if args.bag else output / "recording"
    if not args.bag and not recording.exists():
        graph = Graph.load(find_config_dir())
        run_profile(graph, "sim", {"record": "true", "record_path": str(recording), "launch_rviz": "false"},
                    args.seconds, f"recording the sim profile for {args.seconds:g} s")
    source = recording_summary(recording)
    console.print(f"recording: {recording} ({source['duration_s']:.1f} s, {source['messages']} messages on "
                  f"{len(source['topics'])} topics, {source['storage']} + {source['compression']})")
    figures = storage_figures(recording, output / "converted")
    print_table(f"the same {source['duration_s']:.0f} s recording in each rosbag2 storage",
                ("storage + compression", "size MB", "saving vs uncompressed", "write s", "read s"),
                [(f.label, f"{f.size_bytes / 1e6:.2f}", f"{100 * saving(figures, f):.0f} %", f"{f.write_s:.2f}",
                  f"{f.read_s:.2f}") for f in figures])
    record = {"command": shlex.join(["fedvla", *sys.argv[1:]]), "commit": working_tree_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), "recording": source,
              "bags": [{**dataclasses.asdict(f), "saving": saving(figures, f)} for f in figures]}
    (output / "bench.json").write_text(json.dumps(record, indent=1))
    (output / "bag.md").write_text(bag_markdown(record))
    console.print(f"figures: {output / 'bench.json'}, table: {output / 'bag.md'}")
    return 0


def bag_markdown(record: dict) -> str:
    """The bench's table from its bench.json (what a results README shows)."""
    source = record["recording"]
    lines = [f"# rosbag2 storage and compression: one {source['duration_s']:.0f} s recording of the sim profile", "",
             f"`{record['command']}` at commit `{record['commit'][:12]}`, {record['date']}: {source['messages']} messages on "
             f"{len(source['topics'])} topics, recorded as {source['storage']} + {source['compression']}, then rewritten "
             "message for message in each storage.", "",
             "| storage + compression | size (MB) | saving vs the same storage uncompressed | write (s) | read (s) |",
             "|---|---:|---:|---:|---:|"]
    for bag in record["bags"]:
        lines.append(f"| {bag['storage']} + {bag['compression']} | {bag['size_bytes'] / 1e6:.2f} | "
                     f"{100 * bag['saving']:.0f} % | {bag['write_s']:.2f} | {bag['read_s']:.2f} |")
    return "\n".join(lines) + "\n"


def cmd_bench_skills(args: argparse.Namespace) -> int:
    from fedvla.skills.aggregation_cost import skill_round_figures

    rows = skill_round_figures(args.clients, args.parameters)
    print_table(f"one skill's aggregation: {args.clients} clients, {args.parameters:,} parameters",
                ("method", "client s (mean)", "server s", "upload MB per client", "max error vs plaintext"),
                [(r.method, f"{r.client_s:.3f}", f"{r.server_s:.3f}", f"{r.upload_bytes / 1e6:.2f}", f"{r.max_error:.2e}")
                 for r in rows])
    return 0


def cmd_bench_posture(args: argparse.Namespace) -> int:
    import json

    from fedvla.bench.posture import demonstration_postures, plot, posture_figures
    from fedvla.paths import run_directory

    episodes = demonstration_postures([Path(d) for d in args.datasets])
    figures = posture_figures(episodes, components=args.components)
    print_table(f"IK posture prior on held-out demonstration steps ({len(episodes)} episodes, every 5th held out)",
                ("prior", "distance to demonstrated joints, median (rad)", "mean (rad)", "converged", "iterations"),
                [(f.prior, f"{np.median(f.distance_rad):.3f}", f"{f.distance_rad.mean():.3f}",
                  f"{100 * f.converged:.0f} %", f"{f.iterations_mean:.1f}") for f in figures])
    output = Path(args.output or run_directory("posture_bench"))
    output.mkdir(parents=True, exist_ok=True)
    plot(figures, output / "posture.png")
    (output / "bench.json").write_text(json.dumps({"datasets": args.datasets, "figures": [
        {"prior": f.prior, "distance_median_rad": float(np.median(f.distance_rad)), "distance_mean_rad":
         float(f.distance_rad.mean()), "converged": f.converged, "iterations_mean": f.iterations_mean} for f in figures]},
        indent=1))
    console.print(f"figures: {output / 'bench.json'}, plot: {output / 'posture.png'}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print figures").add_subparsers(
        dest="bench_command", required=True)
    policy_bench = bench.add_parser("policy", help="policy step / trunk latency per feed-forward kind")
    policy_bench.add_argument("--model-config", help="model config file (default: config/model/hpt_small.yaml)")
    policy_bench.add_argument("--proprio-dim", type=int, default=4)
    policy_bench.add_argument("--action-dim", type=int, default=4)
    policy_bench.add_argument("--kinds", nargs="+", default=["dense", "topk", "adamoe", "dgmoe"])
    policy_bench.add_argument("--repeats", type=int, default=50)
    policy_bench.add_argument("--train-epochs", type=int, default=10,
                              help="epochs of training (every kind) on the synthetic task before timing (0: untrained)")
    policy_bench.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    backends = [b.value for b in StepBackend]
    policy_bench.add_argument("--backends", nargs="*", default=backends, choices=backends,
                              help="step backends (fedvla.model.acceleration) to measure; none: skip")
    policy_bench.add_argument("--backend-kinds", nargs="*", default=["dgmoe"],
                              help="the feed-forward kinds whose step is measured on every backend")
    policy_bench.add_argument("--batch", type=int, default=32,
                              help="the training-size batch the trunk is also timed at (0: skip)")
    policy_bench.set_defaults(func=cmd_bench_policy)
    ik_bench = bench.add_parser("ik", help="IK time per solve while tracking, convergence from home")
    ik_bench.add_argument("--targets", type=int, default=500)
    ik_bench.add_argument("--tracking-steps", type=int, default=2000)
    ik_bench.add_argument("--step", type=float, default=0.01, help="joint-space step between tracking targets (rad)")
    ik_bench.set_defaults(func=cmd_bench_ik)
    twin_bench = bench.add_parser("twin", help="the workcell twin: real-time factor with the camera rendering, "
                                  "camera rate, demonstrations per minute of a run")
    twin_bench.add_argument("--seconds", type=float, default=20.0, help="how long the real-time factor is measured")
    twin_bench.add_argument("--fps", type=float, default=30.0, help="camera rate to aim for")
    twin_bench.add_argument("--task", default="sorting_pills")
    twin_bench.add_argument("--demos", help="a fedvla twin demos output (its demonstrations per minute)")
    twin_bench.add_argument("--checkpoint", help="a policy trained on twin demonstrations: measure the loop's "
                            "end-to-end latency through the graph")
    twin_bench.add_argument("--detector", help="the scene parser's detector, for a checkpoint that uses IOSP")
    twin_bench.add_argument("--latency-seconds", type=float, default=30.0, help="how long the policy drives")
    twin_bench.add_argument("--output", default="", help="where the figures (bench.json) and the latency run go "
                            "(default runs/twin_bench_<date>_<time>)")
    twin_bench.set_defaults(func=cmd_bench_twin)
    realtime_bench = bench.add_parser("realtime", help="sync against async chunk execution (each aggregator) in the "
                                      "twin, under injected policy latency: success, completion time, smoothness")
    realtime_bench.add_argument("--checkpoint", required=True, help="a policy trained on twin demonstrations")
    realtime_bench.add_argument("--task", default="open_drawer")
    realtime_bench.add_argument("--trials", type=int, default=20, help="trials per condition and latency")
    realtime_bench.add_argument("--max-steps", type=int, default=80, help="chunks before a trial times out")
    realtime_bench.add_argument("--latencies", type=float, nargs="+", default=[0.0, 0.1, 0.3],
                                help="injected policy latencies, seconds")
    from fedvla.bench.realtime import condition_names

    realtime_bench.add_argument("--conditions", nargs="+", choices=condition_names(), metavar="CONDITION",
                                help=f"{', '.join(condition_names())} (default all)")
    realtime_bench.add_argument("--output", default="", help="where each condition's run and bench.json go "
                                "(default runs/realtime_bench_<date>_<time>; a run resumes)")
    realtime_bench.add_argument("--launch-argument", action="append", default=[], metavar="NAME:=VALUE",
                                help="a twin launch argument for every condition (repeat), e.g. rtde_watchdog_hz:=10 "
                                "for the robot's 100 ms RTDE watchdog (the twin's own: 500 ms); not one the "
                                "conditions set")
    realtime_bench.set_defaults(func=cmd_bench_realtime, on_interrupt=RESUME_WITH_OUTPUT_HINT)
    bag_bench = bench.add_parser("bag", help="the size of one recording in each rosbag2 storage and compression")
    bag_bench.add_argument("--seconds", type=float, default=30.0, help="how long the sim profile is recorded")
    bag_bench.add_argument("--bag", help="measure this recording instead of recording the sim profile")
    bag_bench.add_argument("--output", default="", help="where the bags and bench.json go "
                           "(default runs/bag_bench_<date>_<time>)")
    bag_bench.set_defaults(func=cmd_bench_bag)
    posture_bench = bench.add_parser("posture", help="IK posture prior: fixed (home) vs GMR from demonstrations")
    posture_bench.add_argument("datasets", nargs="+", help="episode datasets of arm demonstrations (proprio: joints)")
    posture_bench.add_argument("--components", type=int, default=6)
    posture_bench.add_argument("--output", default="")
    posture_bench.set_defaults(func=cmd_bench_posture)
    skills_bench = bench.add_parser("skills", help="one skill's aggregation under CKKS and under SecAgg masks")
    skills_bench.add_argument("--clients", type=int, default=4)
    skills_bench.add_argument("--parameters", type=int, default=500_000, help="skill size (the paper's ~0.5 M)")
    skills_bench.set_defaults(func=cmd_bench_skills)
    fed_bench = bench.add_parser("federation", help="EDA aggregation time and upload size")
    fed_bench.add_argument("--parameters", type=float, default=50e6, help="trunk parameters (default 50e6)")
    fed_bench.add_argument("--clients", type=int, nargs="+", default=[2, 4, 8, 16])
    fed_bench.add_argument("--model-configs", nargs="+", default=["tiny", "hpt_small", "hpt_base"])
    fed_bench.add_argument("--repeats", type=int, default=3)
    fed_bench.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    fed_bench.set_defaults(func=cmd_bench_federation)
    secagg_bench = bench.add_parser("secagg", help="secure aggregation (SecAgg) vs plaintext EDA per round")
    secagg_bench.add_argument("--model-config", default="hpt_small", help="config/model/<name>.yaml (default hpt_small)")
    secagg_bench.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    secagg_bench.add_argument("--dropped", type=int, default=1, help="clients that vanish after sharing keys")
    secagg_bench.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    secagg_bench.set_defaults(func=cmd_bench_secagg)
    iosp_bench = bench.add_parser("iosp", help="IOSP latency per frame with the offline defaults")
    iosp_bench.add_argument("--task", default="drawer-close-v3")
    iosp_bench.add_argument("--instruction", default="push the drawer closed")
    iosp_bench.add_argument("--frames", type=int, default=30)
    iosp_bench.add_argument("--every-n", type=int, default=5, help="detector period with the cache on")
    iosp_bench.set_defaults(func=cmd_bench_iosp)
    transfer = bench.add_parser("transfer", help="federation upload/fetch throughput over ROS 2 services vs TCP "
                                "(options: those of federation_bench; --help lists them)", add_help=False)
    transfer.set_defaults(func=cmd_bench_transfer, passes_options=True)
    soak = commands.add_parser("soak", help="soak and fault test of the federation on localhost (options: those of "
                          "federation_soak; --help lists them)", add_help=False)
    soak.set_defaults(func=cmd_soak, passes_options=True)
