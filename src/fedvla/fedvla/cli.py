"""``fedvla``: the stack's command line for machines with or without the ROS 2 CLI.

    fedvla profiles                          list the launch profiles and their arguments
    fedvla launch sim [name:=value ...]      start a profile's nodes (like ros2 launch)
    fedvla demo                              the main job: the simulated stack recorded to a bag,
                                             federated rounds over ROS 2, a short simulation study
                                             (collect, federate, closed loop, recorded trials)
                                             and a replay of a recorded trial through the policy
    fedvla bag info PATH                     topics, types and message counts of a rosbag2
    fedvla bag export DATASET OUT            one rosbag2 per dataset episode (the stack's topics)
    fedvla bag import BAG... --output DS     bags (robot recordings) as dataset episodes
    fedvla replay BAG --checkpoint CKPT      open-loop replay through the policy: errors, latency,
                                             report and plot
    fedvla bench policy                      policy/trunk latency per MoE kind, experts per token
    fedvla bench federation                  EDA aggregation time, bytes uploaded per round
    fedvla bench transfer                    federation throughput over ROS 2 services vs TCP
    fedvla bench iosp                        scene-parsing latency per frame (offline defaults)
    fedvla bench secagg                      secure EDA (SecAgg) vs plaintext per round, 4 and 16 clients
    fedvla bench ik                          IK time per solve (tracking) and convergence from home
    fedvla soak [--rounds 50 --clients 4]    long federation with client kills, a server restart,
                                             duplicated and delayed uploads: figures and checks
    fedvla federation credentials ID ...     a credentials file with fresh secrets
    fedvla federation report DIR             the round table of a federation directory
"""
from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedvla import topics
from fedvla.bag import BagError, BagSummary, read_messages, summarize_bag
from fedvla.config import ConfigError
from fedvla.graph import Graph, find_config_dir
from fedvla.paths import run_directory
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
    """Camera topics of the sim profile's camera nodes and the scene parse (what the demo must have
    recorded)."""
    nodes = graph.resolve("sim")
    cameras = [topics.node_topic(n.spec.fully_qualified_name, rel)
               for n in nodes if n.spec.executable == "camera_node" for rel in topics.CAMERA_TOPICS]
    parses = [topics.node_topic(n.spec.fully_qualified_name, topics.PARSED_SCENE)
              for n in nodes if n.spec.executable == "scene_parser"]
    arms = [t for n in nodes if n.spec.executable == "ur3_driver"
            for t in (topics.JOINT_STATES, topics.node_topic(n.spec.fully_qualified_name, topics.TOOL_POSE))]
    return cameras + parses + arms


def arm_motion(bag: Path, driver: str = topics.UR3_DRIVER_NODE) -> tuple[float, float, int]:
    """(tool path length in m, largest distance from the start in m, chunks refused) of a recording."""
    import numpy as np

    poses = [(m.pose.position.x, m.pose.position.y, m.pose.position.z)
             for _, _, m in read_messages(bag, [topics.node_topic(driver, topics.TOOL_POSE)])]
    if len(poses) < 2:
        return 0.0, 0.0, 0
    track = np.asarray(poses)
    refused = 0
    for _, _, array in read_messages(bag, [topics.DIAGNOSTICS]):
        refused = max(refused, sum(int(v.value) for s in array.status for v in s.values
                                   if v.key.startswith("refused_chunks.")))
    return (float(np.linalg.norm(np.diff(track, axis=0), axis=1).sum()),
            float(np.linalg.norm(track - track[0], axis=1).max()), refused)


def print_scene_parses(bag: Path) -> None:
    """The last recorded scene parse of each camera: instruction, targets, objects by group."""
    from fedvla.iosp.types import ObjectGroup

    parse_topic = topics.node_topic(topics.SCENE_PARSER_NODE, topics.PARSED_SCENE)
    last = {msg.camera_name: msg for _, _, msg in read_messages(bag, [parse_topic])}
    if not last:
        return
    table = Table(title=f"last scene parse per camera ({parse_topic})")
    table.add_column("camera")
    table.add_column("instruction")
    for group in ObjectGroup:
        table.add_column(f"{group.name.lower()} (tokens)")
    for camera, msg in sorted(last.items()):
        k = msg.tokens_per_group
        cells = []
        for group in ObjectGroup:
            names = sorted({o.class_name for o in msg.objects if o.group == group})
            tokens = sum(1 for i in msg.group_token_indices[group * k:(group + 1) * k] if i >= 0)
            cells.append(f"{', '.join(names) or '-'} ({tokens})")
        table.add_row(camera, msg.instruction, *cells)
    console.print(table)


DEMO_PARTS = 4


def cmd_demo(args: argparse.Namespace) -> int:
    graph = Graph.load(args.config_dir or find_config_dir())
    output = Path(args.output or run_directory("demo")).resolve()
    bag = output / "bag"
    console.rule(f"FedVLA-ROS demo 1/{DEMO_PARTS}: simulated stack (sim profile), recorded to rosbag2")
    console.print(f"profile sim for {args.duration:g} s → {bag}")
    run_profile(graph, "sim", {"record": "true", "record_path": str(bag), "launch_rviz": "false"},
                args.duration, "sim profile")
    summary = summarize_bag(bag)
    print_bag_summary(summary)
    recorded = {t.name: t.count for t in summary.topics}
    missing = [t for t in expected_demo_topics(graph) if recorded.get(t, 0) == 0]
    if missing:
        console.print(f"[red]no messages on {', '.join(missing)}")
        return 1
    print_scene_parses(bag)
    path_m, reach_m, refused = arm_motion(bag)
    console.print(f"simulated UR3 under the arm runtime (ur3_driver, actions from motion_pattern): tool path "
                  f"{path_m * 100:.1f} cm, up to {reach_m * 100:.1f} cm from its start, {refused} chunks refused")
    if path_m < 0.01:
        console.print("[red]the simulated arm did not move")
        return 1
    console.print(f"[green]recorded {sum(recorded.values())} messages on {len(recorded)} topics: {bag}")
    if args.rounds and demo_federation(graph, output / "federation", args.rounds, args.federation_timeout):
        return 1
    if args.study_scale == "none":
        return 0
    study_dir = output / "study"
    results = demo_study(graph.config_dir, args.study_scale, study_dir)
    return demo_replay(graph, results, output / "replay", study_dir)


def demo_study(config_dir: Path, scale_name: str, directory: Path) -> dict:
    """Collect → federate (FedAvg, FedVLA) → closed-loop evaluation with recorded trials → tables."""
    from fedvla.sim.study import Study, load_scale

    scale = load_scale(config_dir, scale_name)
    console.rule(f"FedVLA-ROS demo 3/{DEMO_PARTS}: simulation study (scale {scale_name}): collect, federate "
                 f"{' and '.join(scale.methods)}, evaluate in closed loop")
    results = Study(config_dir, scale, directory).run(command=shlex.join(["fedvla", *sys.argv[1:]]))
    table = Table(title="closed-loop success (%) per task")
    tasks = list(scale.collect_config().tasks)
    for column in ("method", *tasks, "experts/token"):
        table.add_column(column, justify="right")
    for name, result in results.items():
        evaluations = [result["evaluation"][t] for t in tasks]
        table.add_row(name, *(f"{100 * e['success_rate']:.0f}" for e in evaluations),
                      f"{sum(e['experts_per_token'] for e in evaluations) / len(evaluations):.2f}")
    console.print(table)
    return results


def demo_replay(graph: Graph, results: dict, directory: Path, study_dir: Path) -> int:
    """A recorded closed-loop trial of FedVLA's policy, replayed through the ROS graph (replay profile)."""
    from fedvla.data.bag_episodes import BagEpisodeConfig, BagSampling, read_bag_steps
    from fedvla.replay import METRICS_FILE, PLOT_FILE, REPORT_FILE

    method = "fedvla" if "fedvla" in results else next(iter(results))
    task, evaluation = next(iter(results[method]["evaluation"].items()))
    if not evaluation.get("bags"):
        console.print(f"[red]the study recorded no closed-loop trial of {method} (evaluate.record_trials)")
        return 1
    bag, checkpoint = evaluation["bags"][0], evaluation["checkpoint"]
    console.rule(f"FedVLA-ROS demo 4/{DEMO_PARTS}: replay of a recorded closed-loop trial ({method}, {task}) "
                 "through bag_player → policy → replay_evaluator")
    print_bag_summary(summarize_bag(bag))
    sampling = BagSampling()  # the rate the trial ran at: the policy runs at it in the replay
    next(read_bag_steps(bag, BagEpisodeConfig(camera_names=results[method]["model"]["camera_names"],
                                              proprio_dim=results[method]["model"]["proprio_dim"]), sampling))
    run_profile(graph, "replay", {"bag": bag, "checkpoint": checkpoint, "replay_output": str(directory),
                                  "policy_rate": f"{sampling.rate_hz:g}", "replay_rate": "0.25"},
                None, "replay profile")
    if not (directory / METRICS_FILE).is_file():
        console.print("[red]the replay wrote no report (its output is above)")
        return 1
    console.print(f"[green]tables: {study_dir / 'results.md'}; plots: {study_dir / 'success.png'}, "
                  f"{study_dir / 'validation_loss.png'}, {study_dir / 'experts.png'}")
    console.print(f"[green]replay report: {directory / REPORT_FILE}; plot: {directory / PLOT_FILE}")
    return 0


def demo_federation(graph: Graph, directory: Path, rounds: int, timeout_s: float) -> int:
    """Federated rounds between fed_server and three simulated robots (the federation profile)."""
    from fedvla.federation.report import FederationProgress, print_federation_report

    console.rule(f"FedVLA-ROS demo 2/{DEMO_PARTS}: {rounds} federated rounds, fed_server + 3 robots (federation profile)")
    if directory.exists():
        raise ConfigError("--output", f"{directory} exists (a finished federation would only resume)",
                          "a new output directory")
    clients = ("robot_a", "robot_b", "robot_c")
    progress = FederationProgress(directory / "server", clients=clients)
    finished = run_profile(graph, "federation", {"federation_dir": str(directory), "rounds": str(rounds)},
                           timeout_s, "federation profile", until=progress.done, status=progress.describe)
    print_federation_report(console, directory)
    if not finished:
        console.print(f"[red]the federation did not finish within {timeout_s:g} s")
        return 1
    console.print(f"[green]{rounds} federated rounds done; each robot's final checkpoint (the global trunk with "
                  f"its own stems and head): {', '.join(str(directory / c / 'final') for c in clients)}")
    return 0


def cmd_bag_info(args: argparse.Namespace) -> int:
    print_bag_summary(summarize_bag(args.path))
    return 0


def _progress() -> Progress:
    return Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def cmd_bag_export(args: argparse.Namespace) -> int:
    from fedvla.data.bag_episodes import export_dataset
    from fedvla.data.episodes import load_meta

    meta = load_meta(args.dataset)
    chosen = args.episodes if args.episodes is not None else list(range(len(meta.episodes)))
    with _progress() as progress:
        bar = progress.add_task("exporting episodes", total=len(chosen))
        bags = export_dataset(args.dataset, args.output, chosen, storage=args.storage,
                              proprio_joint_names=args.proprio_joint_names or (),
                              on_episode=lambda _: progress.advance(bar))
    console.print(f"[green]{len(bags)} bags in {args.output}")
    return 0


def cmd_bag_import(args: argparse.Namespace) -> int:
    from fedvla.data.bag_episodes import BagEpisodeConfig, dataset_bag_config, find_bags, import_bags
    from fedvla.data.episodes import META_FILE
    from fedvla.model.language import shared_instruction_encoder

    bags = find_bags(args.bags)
    options = {k: v for k, v in (("proprio_joint_names", args.proprio_joint_names), ("action_topic", args.action_topic),
                                 ("instruction", args.instruction), ("max_input_age_s", args.max_input_age))
               if v is not None}
    if (Path(args.output) / META_FILE).is_file():
        config = dataset_bag_config(args.output, **options)
    else:
        if not args.cameras or not args.proprio_dim:
            raise ConfigError("--cameras/--proprio-dim", f"{args.output} is a new dataset",
                              "the policy cameras (in order) and the proprio size")
        config = BagEpisodeConfig(camera_names=args.cameras, proprio_dim=args.proprio_dim, iosp=args.iosp,
                                  control_rate_hz=args.control_rate, **options)
    encoder = shared_instruction_encoder(args.language_model_path or "")
    with _progress() as progress:
        bar = progress.add_task("importing bags", total=len(bags))
        imported = import_bags(bags, args.output, config, encoder, image_size=args.image_size,
                               on_episode=lambda _: progress.advance(bar))
    for episode in imported:
        console.print(f"{episode.bag} → {episode.file}: {episode.sampling.describe()}")
    console.print(f"[green]{len(imported)} episodes added to {args.output}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from fedvla.model.runtime import PolicyRuntime, PolicyRuntimeConfig
    from fedvla.replay import METRICS_FILE, PLOT_FILE, REPORT_FILE, replay_bag, write_replay_report

    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=args.checkpoint, device=args.device,
                                                proprio_joint_names=tuple(args.proprio_joint_names or ())))
    output = Path(args.output or run_directory("replay")).resolve()
    duration_s = summarize_bag(args.bag).duration_s
    with _progress() as progress:
        bar = progress.add_task("replaying through the policy", total=None)

        def on_step(n: int, sampling) -> None:
            # the total is known once the sampling rate is (from the first recorded chunk)
            progress.update(bar, completed=n + 1, total=int(duration_s * sampling.rate_hz) + 1)

        record, sampling = replay_bag(args.bag, runtime, control_rate_hz=args.rate, every=args.every,
                                      instruction=args.instruction or "", max_input_age_s=args.max_input_age,
                                      on_step=on_step)
    details = {"bag": str(Path(args.bag).resolve()), "checkpoint": str(Path(args.checkpoint).resolve()),
               "sampling": sampling.describe(), "policy on every n-th step": args.every}
    metrics = write_replay_report(output, record, title="Open-loop replay", details=details)
    table = Table(title=f"open-loop replay: {metrics.steps} policy steps, chunk of {metrics.horizon}")
    for column in ("dimension", "MAE", "RMSE", "MAE / recorded std"):
        table.add_column(column, justify="right")
    for d in range(metrics.action_dim):
        norm = metrics.first_action_normalised_mae[d]
        table.add_row(f"action_{d}", f"{metrics.first_action_mae[d]:.4f}", f"{metrics.first_action_rmse[d]:.4f}",
                      "-" if norm is None else f"{norm:.3f}")
    console.print(table)
    latency = metrics.latency_ms
    console.print(f"chunk MAE {metrics.chunk_mae:.4f}; latency median {latency['median']:.1f} ms, p90 "
                  f"{latency['p90']:.1f} ms; {sampling.describe()}")
    console.print(f"[green]report: {output / REPORT_FILE}; plot: {output / PLOT_FILE}; data: {output / METRICS_FILE}")
    return 0


def cmd_bench_policy(args: argparse.Namespace) -> int:
    import torch

    from fedvla.model.bench import matmul_gflops, run_policy_bench, trunk_ratio_floor
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
    figures = run_policy_bench(config, kinds, repeats=args.repeats, train_epochs=args.train_epochs, batch=args.batch)
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
    return 0


def cmd_bench_federation(args: argparse.Namespace) -> int:
    import torch

    from fedvla.federation.bench import bench_aggregation, upload_size

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

    from fedvla.federation.bench import bench_count_privacy, bench_secure_aggregation

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


def _run_ros_tool(executable_name: str, command: str, arguments: list[str]) -> int:
    """Tools that live with the nodes (they need rclpy) run as their installed executables."""
    import subprocess

    from fedvla.runner import find_executable

    executable = find_executable("fedvla_ros", executable_name)
    if executable is None:
        raise ConfigError(command, f"fedvla_ros/{executable_name} is not installed", "run .ci/setup first")
    return subprocess.call([str(executable), *arguments])


def cmd_bench_transfer(args: argparse.Namespace) -> int:
    return _run_ros_tool("federation_bench", "bench transfer", args.bench_arguments)


def cmd_soak(args: argparse.Namespace) -> int:
    return _run_ros_tool("federation_soak", "soak", args.bench_arguments)


def cmd_bench_iosp(args: argparse.Namespace) -> int:
    from fedvla.iosp.bench import bench_iosp

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

    from fedvla.robot.bench import bench_ik

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


def cmd_study(args: argparse.Namespace) -> int:
    from fedvla.sim.study import Study, load_scale

    config_dir = Path(args.config_dir) if args.config_dir else find_config_dir()
    scale = load_scale(config_dir, args.scale, rounds=args.rounds,
                       methods=args.methods and tuple(args.methods), device=args.device)
    output = Path(args.output or Path("runs") / f"study_{args.scale}").resolve()
    console.rule(f"FedVLA simulation study, scale {scale.name}: {', '.join(scale.methods)} → {output}")
    Study(config_dir, scale, output).run(command=shlex.join(["fedvla", *sys.argv[1:]]))
    console.print(f"[green]tables: {output / 'results.md'}; plots: {output / 'success.png'}, "
                  f"{output / 'validation_loss.png'}, {output / 'experts.png'}")
    return 0


def cmd_federation_credentials(args: argparse.Namespace) -> int:
    from fedvla.federation.report import generate_credentials
    from fedvla.federation.protocol import CLIENT_ID_PATTERN

    bad = [c for c in args.client_ids if not CLIENT_ID_PATTERN.match(c)]
    if bad:
        raise ConfigError("CLIENT_ID", f"{bad[0]!r} is not a valid client id", "letters, digits, '_' and '-', at most 64")
    sys.stdout.write(generate_credentials(args.client_ids))
    return 0


def cmd_federation_report(args: argparse.Namespace) -> int:
    from fedvla.federation.report import print_federation_report

    print_federation_report(console, Path(args.directory))
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
    launch.add_argument("--duration", type=float, default=None, help="stop after this many seconds, counted once every node is up")
    launch.set_defaults(func=cmd_launch)
    demo = sub.add_parser("demo", help="run the simulated stack and record it to a rosbag2")
    demo.add_argument("--duration", type=float, default=20.0,
                      help="seconds to record the sim profile, counted once every node is up (default 20)")
    demo.add_argument("--output", help="run directory: bag/ (rosbag2) and federation/ "
                      "(default runs/demo_<date>_<time>)")
    demo.add_argument("--rounds", type=int, default=3, help="federated rounds after the sim run (0: none)")
    demo.add_argument("--federation-timeout", type=float, default=600.0,
                      help="seconds the federated rounds may take (default 600)")
    demo.add_argument("--study-scale", default="demo", help="scale of the short simulation study "
                      "(config/study/scales/; default demo, none: skip the study and the replay)")
    demo.set_defaults(func=cmd_demo)
    bench = sub.add_parser("bench", help="benchmarks that print figures").add_subparsers(
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
    policy_bench.add_argument("--batch", type=int, default=32,
                              help="the training-size batch the trunk is also timed at (0: skip)")
    policy_bench.set_defaults(func=cmd_bench_policy)
    ik_bench = bench.add_parser("ik", help="IK time per solve while tracking, convergence from home")
    ik_bench.add_argument("--targets", type=int, default=500)
    ik_bench.add_argument("--tracking-steps", type=int, default=2000)
    ik_bench.add_argument("--step", type=float, default=0.01, help="joint-space step between tracking targets (rad)")
    ik_bench.set_defaults(func=cmd_bench_ik)
    federation = sub.add_parser("federation", help="federation tools").add_subparsers(
        dest="federation_command", required=True)
    credentials = federation.add_parser("credentials", help="print a credentials file with fresh secrets")
    credentials.add_argument("client_ids", nargs="+", metavar="CLIENT_ID")
    credentials.set_defaults(func=cmd_federation_credentials)
    report = federation.add_parser("report", help="round table of a federation directory")
    report.add_argument("directory", help="the federation_dir (with server/state.json)")
    report.set_defaults(func=cmd_federation_report)
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
    soak = sub.add_parser("soak", help="soak and fault test of the federation on localhost (options: those of "
                          "federation_soak; --help lists them)", add_help=False)
    soak.set_defaults(func=cmd_soak, passes_options=True)
    study = sub.add_parser("study", help="the simulation study: collect, train every method, evaluate closed "
                           "loop, tables and plots (resumes an interrupted run)")
    study.add_argument("--scale", default="smoke", help="config/study/scales/<scale>.yaml: smoke, cpu or paper")
    study.add_argument("--output", help="study directory (default runs/study_<scale>)")
    study.add_argument("--methods", nargs="+", help="only these methods (config/study/methods/<name>.yaml)")
    study.add_argument("--rounds", type=int, help="override the scale's rounds")
    study.add_argument("--device", help="torch device for training (default auto: CUDA when present)")
    study.set_defaults(func=cmd_study)
    bag = sub.add_parser("bag", help="rosbag2 tools").add_subparsers(dest="bag_command", required=True)
    info = bag.add_parser("info", help="topics and message counts of a rosbag2 directory")
    info.add_argument("path")
    info.set_defaults(func=cmd_bag_info)
    export = bag.add_parser("export", help="one rosbag2 per dataset episode, on the stack's topics")
    export.add_argument("dataset", help="dataset directory (with dataset.json)")
    export.add_argument("output", help="directory for the bags (episode_000000, ...)")
    export.add_argument("--episodes", type=int, nargs="+", help="only these episode indices")
    export.add_argument("--storage", default="sqlite3", choices=["sqlite3", "mcap"])
    export.add_argument("--proprio-joint-names", nargs="+", help="JointState names of the proprio dimensions "
                        "(default proprio_0, proprio_1, ...)")
    export.set_defaults(func=cmd_bag_export)
    import_ = bag.add_parser("import", help="rosbag2 recordings (one episode each) into a dataset")
    import_.add_argument("bags", nargs="+", help="bag directories, or directories of bags")
    import_.add_argument("--output", required=True, help="dataset directory (created, or appended to)")
    import_.add_argument("--cameras", nargs="+", help="policy cameras in order (/camera/<name>/color/image_raw); "
                         "a new dataset only")
    import_.add_argument("--proprio-dim", type=int, help="proprio size (a new dataset only)")
    import_.add_argument("--image-size", type=int, default=128, help="square image size (a new dataset only)")
    import_.add_argument("--control-rate", type=float, default=0.0, help="sampling rate, Hz (a new dataset only; "
                         "default: the step period of the recorded action chunks)")
    import_.add_argument("--iosp", action="store_true", help="record the scene parses' IOSP selections (a new dataset only)")
    import_.add_argument("--proprio-joint-names", nargs="+", help="JointState names in proprio order (default: the first ones)")
    import_.add_argument("--action-topic", help="ActionChunk topic of the executed actions (default /policy/action_chunk)")
    import_.add_argument("--instruction", help="instruction of bags that have no /instruction message")
    import_.add_argument("--max-input-age", type=float, help="seconds after which an input is stale (default 0.5)")
    import_.add_argument("--language-model-path", help="sentence-transformers model (default: the bundled MiniLM)")
    import_.set_defaults(func=cmd_bag_import)
    replay = sub.add_parser("replay", help="open-loop replay of a bag through a policy checkpoint: per-dimension and "
                            "chunk error against the recorded actions, latency, report and plot")
    replay.add_argument("bag", help="rosbag2 directory (one episode)")
    replay.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    replay.add_argument("--output", help="report directory (default runs/replay_<date>_<time>)")
    replay.add_argument("--rate", type=float, default=0.0, help="sampling rate of the bag, Hz (default: the step "
                        "period of the recorded action chunks)")
    replay.add_argument("--every", type=int, default=1, help="run the policy on every n-th step (default 1)")
    replay.add_argument("--instruction", help="instruction of a bag that has no /instruction message")
    replay.add_argument("--proprio-joint-names", nargs="+", help="JointState names in proprio order")
    replay.add_argument("--max-input-age", type=float, default=0.5, help="seconds after which an input is stale")
    replay.add_argument("--device", default="cpu")
    replay.set_defaults(func=cmd_replay)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that explain a bad input: printed as one line, never as a traceback. The dataset and
    checkpoint errors count once their (torch-importing) modules are loaded."""
    errors: list[type[Exception]] = [ConfigError, RunnerError, BagError]
    for module, name in (("fedvla.data.episodes", "DatasetError"), ("fedvla.model.checkpoint", "CheckpointError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (timeout, systemd, docker stop) stops the nodes like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "passes_options", False):
        args.bench_arguments = extra  # handed to the benchmark executable as they are
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        console.print(f"[red]fedvla: error: {err}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
