"""``fedvla study``: the simulation study (collect, federate every method, evaluate in closed loop,
tables and plots), resumed where an interrupted run stopped."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fedvla.cli.common import RESUME_HINT, console
from fedvla.graph import find_config_dir


def cmd_study(args: argparse.Namespace) -> int:
    from fedvla.sim.study import Study, load_scale

    config_dir = Path(args.config_dir) if args.config_dir else find_config_dir()
    scale = load_scale(config_dir, args.scale, rounds=args.rounds,
                       methods=args.methods and tuple(args.methods), device=args.device)
    if args.detector:  # IOSP on a trained detector instead of the simulator's segmentation
        scale.collect = {**scale.collect, "detector": str(Path(args.detector).resolve())}
    output = Path(args.output or Path("runs") / f"study_{args.scale}").resolve()
    study = Study(config_dir, scale, output)
    if args.report_only:
        report = study.report(command=shlex.join(["fedvla", *sys.argv[1:]]), first_seeds=args.first_seeds)
        console.print(report.read_text())
        return 0
    console.rule(f"FedVLA simulation study, scale {scale.name}: {', '.join(scale.methods)} → {output}")
    study.run(command=shlex.join(["fedvla", *sys.argv[1:]]), first_seeds=args.first_seeds)
    console.print(f"[green]tables: {output / 'results.md'}; plots: {output / 'success.png'}, "
                  f"{output / 'validation_loss.png'}, {output / 'experts.png'}")
    return 0


def cmd_study_detector(args: argparse.Namespace) -> int:
    from fedvla.iosp.detector_training import DetectorTrainConfig
    from fedvla.paths import run_directory
    from fedvla.sim.detector_data import MetaWorldDetectorData, build_metaworld_detector

    data = MetaWorldDetectorData(train_layouts_per_task=args.train_layouts, val_layouts_per_task=args.val_layouts,
                                 image_size=args.image_size)
    train = DetectorTrainConfig(model=args.model, epochs=args.epochs, image_size=args.image_size, batch=args.batch)
    output = args.output or run_directory("study_detector")
    metrics = build_metaworld_detector(output, data, train)
    for name, value in sorted(metrics.per_class_map50_95.items()):
        console.print(f"  {name:16s} mAP50-95 {value:.3f}")
    console.print(f"validation renders (held-out layouts): mAP50 {metrics.map50:.3f}, mAP50-95 {metrics.map50_95:.3f}")
    console.print(f"weights: {metrics.weights}")
    return 0


def cmd_study_skills(args: argparse.Namespace) -> int:
    from fedvla.sim.skills_study import SkillsStudy, load_skills_scale

    config_dir = Path(args.config_dir) if args.config_dir else find_config_dir()
    scale = load_skills_scale(config_dir, args.scale, methods=args.methods and tuple(args.methods))
    output = Path(args.output or Path("runs") / f"study_skills_{args.scale}").resolve()
    console.rule(f"Skill federation on a frozen base, scale {scale.name}: {', '.join(scale.methods)} → {output}")
    report = SkillsStudy(config_dir, scale, output).run(command=shlex.join(["fedvla", *sys.argv[1:]]))
    console.print(report.read_text())
    console.print(f"[green]tables: {report}; plots: {output / 'success.png'}, {output / 'cost.png'}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    study = commands.add_parser("study", help="the simulation study: collect, train every method, evaluate closed "
                           "loop, tables and plots (resumes an interrupted run)")
    study.add_argument("--scale", default="smoke", help="config/study/scales/<scale>.yaml: smoke, cpu or paper")
    study.add_argument("--output", help="study directory (default runs/study_<scale>)")
    study.add_argument("--methods", nargs="+", help="only these methods (config/study/methods/<name>.yaml)")
    study.add_argument("--rounds", type=int, help="override the scale's rounds")
    study.add_argument("--first-seeds", type=int, default=0, metavar="K",
                       help="only each method's first K training seeds (a long study's first pass; rerun without it "
                            "for the rest; with --report-only, the report of the first K)")
    study.add_argument("--device", help="torch device for training (default auto: CUDA when present)")
    study.add_argument("--detector", help="IOSP on this trained YOLOv8 (a fedvla study-detector output) instead of the "
                       "simulator's segmentation, in collection and closed loop (use another --output: the data differ)")
    study.add_argument("--report-only", action="store_true",
                       help="write results.md, the plots and run.json from the result.json files already in the "
                            "output (nothing collected, trained or evaluated)")
    study.set_defaults(func=cmd_study, on_interrupt=RESUME_HINT)
    detector = commands.add_parser("study-detector", help="YOLOv8 from scratch on Meta-World renders labelled from "
                                   "the simulator's segmentation (the study's IOSP with a real detector): mAP")
    detector.add_argument("--train-layouts", type=int, default=40, help="training layouts per task (3 cameras each)")
    detector.add_argument("--val-layouts", type=int, default=10, help="validation layouts per task (other seeds)")
    detector.add_argument("--epochs", type=int, default=30)
    detector.add_argument("--image-size", type=int, default=128, help="the study's render size, where IOSP parses")
    detector.add_argument("--batch", type=int, default=16)
    detector.add_argument("--model", default="yolov8n.yaml", help="ultralytics architecture (from scratch)")
    detector.add_argument("--output", default="", help="run directory (default runs/study_detector_<date>_<time>); "
                          "an existing one keeps its rendered data")
    detector.set_defaults(func=cmd_study_detector)
    skills = commands.add_parser("study-skills", help="skills federated on a frozen base policy against the base alone, "
                                 "local skills, full federated fine-tuning and federated LoRA, on Meta-World: success "
                                 "on new and base tasks, bytes and training time per round (resumes)")
    skills.add_argument("--scale", default="smoke", help="config/study/skills_scales/<scale>.yaml: smoke or cpu")
    skills.add_argument("--output", help="study directory (default runs/study_skills_<scale>)")
    skills.add_argument("--methods", nargs="+", help="only these methods (base, skills_federated, skills_local, "
                        "full_ft_federated, lora_federated)")
    skills.set_defaults(func=cmd_study_skills, on_interrupt=RESUME_HINT)
