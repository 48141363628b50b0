"""``fedvla bag info|convert|view|export|import`` and ``fedvla replay``: rosbag2 recordings as datasets, and
open-loop replay of a recording through a policy."""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from fedvla.bag import COMPRESSIONS, DEFAULT_COMPRESSION, DEFAULT_STORAGE, STORAGE_FORMATS, summarize_bag
from fedvla.cli.common import console, print_bag_summary, progress_bar
from fedvla.config import ConfigError
from fedvla.paths import run_directory


def cmd_bag_info(args: argparse.Namespace) -> int:
    print_bag_summary(summarize_bag(args.path))
    return 0

def cmd_bag_convert(args: argparse.Namespace) -> int:
    from fedvla.bag import convert_bag

    source = summarize_bag(args.source)
    with progress_bar() as progress:
        bar = progress.add_task(f"writing {args.storage}, compression {args.compression}", total=source.message_count)
        converted = convert_bag(args.source, args.output, args.storage, args.compression,
                                on_message=lambda: progress.advance(bar))
    print_bag_summary(converted)
    console.print(f"[green]{source.size_bytes / 1e6:.1f} MB ({source.storage}, {source.compression}) → "
                  f"{converted.size_bytes / 1e6:.1f} MB ({converted.storage}, {converted.compression}): {args.output}")
    return 0

def cmd_bag_view(args: argparse.Namespace) -> int:
    import time

    from fedvla.app.viewer import ViewerConfig, ViewerMode, close_recording, log_bag, open_recording

    mode = ViewerMode.SAVE if args.save else ViewerMode.NATIVE if args.native else ViewerMode.WEB
    config = ViewerConfig(mode=mode.value, save_path=args.save or "", web_port=args.web_port, grpc_port=args.grpc_port)
    summary = summarize_bag(args.bag)
    stream, where = open_recording(config, Path(args.bag).name)
    console.print(where)
    with progress_bar() as progress:
        bar = progress.add_task("logging the bag to rerun", total=summary.message_count)
        counts = log_bag(args.bag, stream, on_message=lambda: progress.advance(bar))
    console.print(f"shown: {', '.join(f'{t} ({n})' for t, n in sorted(counts.items())) or 'nothing'}")
    if mode is ViewerMode.WEB:
        console.print("serving the web viewer until Ctrl-C")
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
    close_recording(stream)
    return 0

def cmd_bag_export(args: argparse.Namespace) -> int:
    from fedvla.data.bag_export import export_dataset
    from fedvla.data.episodes import load_meta

    meta = load_meta(args.dataset)
    chosen = args.episodes if args.episodes is not None else list(range(len(meta.episodes)))
    with progress_bar() as progress:
        bar = progress.add_task("exporting episodes", total=len(chosen))
        bags = export_dataset(args.dataset, args.output, chosen, storage=args.storage,
                              proprio_joint_names=args.proprio_joint_names or (),
                              on_episode=lambda _: progress.advance(bar))
    console.print(f"[green]{len(bags)} bags in {args.output}")
    return 0

def cmd_bag_import(args: argparse.Namespace) -> int:
    from fedvla.data.bag_import import BagEpisodeConfig, dataset_bag_config, find_bags, import_bags
    from fedvla.data.episodes import META_FILE
    from fedvla.language import shared_instruction_encoder

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
    with progress_bar() as progress:
        bar = progress.add_task("importing bags", total=len(bags))
        imported = import_bags(bags, args.output, config, encoder, image_size=args.image_size,
                               on_episode=lambda _: progress.advance(bar))
    for episode in imported:
        console.print(f"{episode.bag} → {episode.file}: {episode.sampling.describe()}")
    console.print(f"[green]{len(imported)} episodes added to {args.output}")
    return 0

def cmd_replay(args: argparse.Namespace) -> int:
    from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig
    from fedvla.replay import METRICS_FILE, PLOT_FILE, REPORT_FILE, replay_bag, write_replay_report

    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=args.checkpoint, device=args.device,
                                                proprio_joint_names=tuple(args.proprio_joint_names or ())))
    output = Path(args.output or run_directory("replay")).resolve()
    duration_s = summarize_bag(args.bag).duration_s
    with progress_bar() as progress:
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


def register(commands: argparse._SubParsersAction) -> None:
    bag = commands.add_parser("bag", help="rosbag2 tools").add_subparsers(dest="bag_command", required=True)
    info = bag.add_parser("info", help="topics and message counts of a rosbag2 directory")
    info.add_argument("path")
    info.set_defaults(func=cmd_bag_info)
    convert = bag.add_parser("convert", help="the same messages in another storage or compression (ros2 bag convert)")
    convert.add_argument("source", help="rosbag2 directory")
    convert.add_argument("output", help="new rosbag2 directory")
    convert.add_argument("--storage", default=DEFAULT_STORAGE, choices=STORAGE_FORMATS)
    convert.add_argument("--compression", default=DEFAULT_COMPRESSION, choices=COMPRESSIONS,
                         help="zstd: MCAP chunks or sqlite3 messages (default zstd)")
    convert.set_defaults(func=cmd_bag_convert)
    view = bag.add_parser("view", help="a recording in rerun, as the live viewer (viewer:=rerun) shows the robot")
    view.add_argument("bag", help="rosbag2 directory")
    view.add_argument("--save", help="write a .rrd file instead of serving the web viewer")
    view.add_argument("--native", action="store_true", help="spawn rerun's native viewer instead of the web viewer")
    view.add_argument("--web-port", type=int, default=9090)
    view.add_argument("--grpc-port", type=int, default=9876)
    view.set_defaults(func=cmd_bag_view)
    export = bag.add_parser("export", help="one rosbag2 per dataset episode, on the stack's topics")
    export.add_argument("dataset", help="dataset directory (with dataset.json)")
    export.add_argument("output", help="directory for the bags (episode_000000, ...)")
    export.add_argument("--episodes", type=int, nargs="+", help="only these episode indices")
    export.add_argument("--storage", default=DEFAULT_STORAGE, choices=STORAGE_FORMATS)
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
    replay = commands.add_parser("replay", help="open-loop replay of a bag through a policy checkpoint: per-dimension and "
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
