"""``fedvla dataset export|import --format lerobot``: episode datasets to and from LeRobotDataset v3.0
(:mod:`fedvla.data.lerobot`)."""
from __future__ import annotations

import argparse

from fedvla.cli.common import console, progress_bar

FORMATS = ("lerobot",)


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from fedvla.data.episodes import load_meta
    from fedvla.data.lerobot import LeRobotExportConfig, export_lerobot

    meta = load_meta(args.dataset)
    config = LeRobotExportConfig(vcodec=args.vcodec, crf=args.crf, robot_type=args.robot_type)
    with progress_bar() as progress:
        bar = progress.add_task("exporting episodes (video encoding)", total=len(meta.episodes))
        export_lerobot(args.dataset, args.output, config, on_episode=lambda _: progress.advance(bar))
    console.print(f"[green]{len(meta.episodes)} episodes as a LeRobotDataset v3.0 in {args.output}")
    return 0


def cmd_dataset_import(args: argparse.Namespace) -> int:
    from fedvla.data.lerobot import LeRobotReader, import_lerobot
    from fedvla.language import shared_instruction_encoder

    episodes = len(LeRobotReader(args.source))
    encoder = shared_instruction_encoder(args.language_model_path or "")
    with progress_bar() as progress:
        bar = progress.add_task("importing episodes (video decoding)", total=episodes)
        imported = import_lerobot(args.source, args.output, encoder, image_size=args.image_size, cameras=args.cameras,
                                  language_encoder=args.language_model_path or "all-MiniLM-L6-v2",
                                  on_episode=lambda _: progress.advance(bar))
    console.print(f"[green]{imported} episodes added to {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    dataset = commands.add_parser("dataset", help="episode datasets to and from other formats").add_subparsers(
        dest="dataset_command", required=True)
    export = dataset.add_parser("export", help="an episode dataset in another format (LeRobotDataset v3.0)")
    export.add_argument("dataset", help="episode dataset directory (with dataset.json)")
    export.add_argument("output", help="new directory for the export")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--vcodec", default="libsvtav1", help="video encoder (LeRobot's default libsvtav1; h264 ...)")
    export.add_argument("--crf", type=int, default=30, help="video quality (lower is better, larger)")
    export.add_argument("--robot-type", default="ur3")
    export.set_defaults(func=cmd_dataset_export)
    import_ = dataset.add_parser("import", help="a dataset in another format (LeRobotDataset v3.0) as episodes")
    import_.add_argument("source", help="the dataset's root directory (with meta/info.json)")
    import_.add_argument("--output", required=True, help="episode dataset directory (created, or appended to)")
    import_.add_argument("--format", choices=FORMATS, required=True)
    import_.add_argument("--image-size", type=int, help="square image size (default: the export's, else 128)")
    import_.add_argument("--cameras", nargs="+", help="cameras to import, in policy order (default all)")
    import_.add_argument("--language-model-path", help="sentence-transformers model (default: the bundled MiniLM)")
    import_.set_defaults(func=cmd_dataset_import)
