"""``fedvla twin ...``: the workcell twin of the paper's real-world cell (:mod:`fedvla.twin`)."""
from __future__ import annotations

import argparse

from fedvla.cli.common import RESUME_HINT, RESUME_WITH_OUTPUT_HINT, run_ros_tool


def cmd_twin_demos(args: argparse.Namespace) -> int:
    return run_ros_tool("twin_demos", "twin demos", args.bench_arguments)


def cmd_twin_evaluate(args: argparse.Namespace) -> int:
    return run_ros_tool("twin_evaluate", "twin evaluate", args.bench_arguments)


def cmd_twin_study(args: argparse.Namespace) -> int:
    return run_ros_tool("twin_study", "twin study", args.bench_arguments)


def cmd_twin_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedvla.twin.results import write_twin_results

    readme = write_twin_results(Path(args.output), Path(args.demos), Path(args.detector) if args.detector else None,
                                [Path(study) for study in args.study], Path(args.bench) if args.bench else None)
    print(readme.read_text())
    return 0


def cmd_twin_detector(args: argparse.Namespace) -> int:
    from fedvla.paths import run_directory
    from fedvla.twin.detector import DetectorDataConfig, DetectorTrainConfig, build_detector

    data = DetectorDataConfig(train_images_per_task=args.train_images, val_images_per_task=args.val_images)
    train = DetectorTrainConfig(model=args.model, epochs=args.epochs, image_size=args.image_size, batch=args.batch)
    output = args.output or run_directory("twin_detector")
    metrics = build_detector(output, data, train)
    for name, value in sorted(metrics.per_class_map50_95.items()):
        print(f"  {name:16s} mAP50-95 {value:.3f}")
    print(f"validation renders (other layouts): mAP50 {metrics.map50:.3f}, mAP50-95 {metrics.map50_95:.3f}")
    print(f"weights: {metrics.weights}  (the twin's scene parser: fedvla launch twin parse_scene:=true "
          f"detector_weights:={metrics.weights})")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    twin = commands.add_parser("twin", help="the workcell twin").add_subparsers(dest="twin_command", required=True)
    demos = twin.add_parser("demos", help="expert demonstrations through the graph, recorded and imported as "
                            "datasets (options: those of twin_demos; --help lists them)", add_help=False)
    demos.set_defaults(func=cmd_twin_demos, passes_options=True, on_interrupt=RESUME_WITH_OUTPUT_HINT)
    evaluate = twin.add_parser("evaluate", help="closed-loop trials of a checkpoint through the graph, recorded, "
                               "with Wilson intervals and the in-process cross-check (options: those of twin_evaluate; "
                               "--help lists them)", add_help=False)
    evaluate.set_defaults(func=cmd_twin_evaluate, passes_options=True, on_interrupt=RESUME_WITH_OUTPUT_HINT)
    detector = twin.add_parser("detector", help="train YOLOv8 from scratch on twin renders labelled from the "
                               "segmentation; prints mAP50 and mAP50-95 on validation layouts")
    detector.add_argument("--train-images", type=int, default=150, help="training renders per task")
    detector.add_argument("--val-images", type=int, default=30, help="validation renders per task (other layouts)")
    detector.add_argument("--epochs", type=int, default=30)
    detector.add_argument("--image-size", type=int, default=640)
    detector.add_argument("--batch", type=int, default=8)
    detector.add_argument("--model", default="yolov8n.yaml", help="ultralytics architecture (from scratch)")
    detector.add_argument("--output", default="", help="run directory (default runs/twin_detector_<date>_<time>); "
                          "an existing one keeps its rendered data")
    detector.set_defaults(func=cmd_twin_detector)
    study = twin.add_parser("study", help="the twin study: demonstrations, federated training (one robot per task), "
                            "closed-loop evaluation through the graph (options: those of twin_study; --help lists them)",
                            add_help=False)
    study.set_defaults(func=cmd_twin_study, passes_options=True, on_interrupt=RESUME_HINT)
    results = twin.add_parser("results", help="summarise recorded twin runs (demos, detector, study) for results/")
    results.add_argument("--demos", required=True, help="a fedvla twin demos output directory")
    results.add_argument("--detector", help="a fedvla twin detector output directory")
    results.add_argument("--study", action="append", default=[],
                         help="a fedvla twin study output directory (repeat: each is copied under study_<scale>)")
    results.add_argument("--bench", help="a fedvla bench twin output directory (its bench.json)")
    results.add_argument("--output", default="results/twin_cpu")
    results.set_defaults(func=cmd_twin_results)
