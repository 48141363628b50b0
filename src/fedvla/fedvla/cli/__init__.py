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
    fedvla bag convert BAG OUT               the same bag in another storage or compression
    fedvla bag view BAG [--save F.rrd]       a recording in rerun's viewer (no RViz needed)
    fedvla dataset export DS OUT --format lerobot          an episode dataset as LeRobotDataset v3.0
    fedvla dataset import SRC --output DS --format lerobot a LeRobotDataset v3.0 as episodes
    fedvla replay BAG --checkpoint CKPT      open-loop replay through the policy: errors, latency,
                                             report and plot
    fedvla bench policy                      policy/trunk latency per MoE kind, experts per token
    fedvla bench federation                  EDA aggregation time, bytes uploaded per round
    fedvla bench transfer                    federation throughput: ROS 2 services, Flower (TLS), TCP
    fedvla bench iosp                        scene-parsing latency per frame (offline defaults)
    fedvla bench secagg                      secure EDA (SecAgg) vs plaintext per round, 4 and 16 clients
    fedvla bench ik                          IK time per solve (tracking) and convergence from home
    fedvla bench twin                        the twin's real-time factor with rendering, camera rate
    fedvla bench bag                         30 s of the sim profile in each rosbag2 storage: sizes
    fedvla soak [--rounds 50 --clients 4]    long federation with client kills, a server restart,
                                             duplicated and delayed uploads: figures and checks
    fedvla federation credentials ID ...     a credentials file with fresh secrets
    fedvla federation report DIR             the round table of a federation directory
    fedvla twin demos [--episodes 50]        expert demonstrations in the workcell twin, through
                                             the graph, recorded and imported as datasets
    fedvla twin evaluate --checkpoint C      closed-loop trials through the graph, recorded, with
                                             Wilson 95 % intervals and the in-process cross-check
    fedvla twin detector                     YOLOv8 from scratch on twin renders: mAP50, mAP50-95
    fedvla study-detector                    YOLOv8 from scratch on Meta-World renders: mAP50, mAP50-95
    fedvla twin study [--scale smoke|cpu]    twin demonstrations, federated training per task, closed
                                             loop through the graph: success with Wilson intervals
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from fedvla.bag import BagError
from fedvla.cli import bag, bench, dataset, demo, federation, launch, study, twin
from fedvla.cli.common import console
from fedvla.config import ConfigError
from fedvla.runner import RunnerError

COMMAND_GROUPS = (launch, demo, bench, federation, study, bag, dataset, twin)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", help="config/ directory with graph.yaml (default: the installed one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
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
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the command's own handlers have stopped what it started; a line, not a
        # traceback, and how to go on where the command can.
        hint = getattr(args, "on_interrupt", "")
        console.print(f"[yellow]fedvla: interrupted{'; ' + hint if hint else ''}", highlight=False)
        return 130
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        console.print(f"[red]fedvla: error: {err}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
