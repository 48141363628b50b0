"""The loop's end-to-end latency in the workcell twin, through the graph (``fedvla bench twin
--checkpoint C``): figures, printed and written, never asserted.

It runs the ``twin`` profile with the checkpoint (and, for a policy that uses IOSP, the scene parser
on ``--detector``), resets the cell, enables execution and lets the policy drive for ``--seconds``
(a protective stop is recovered and the run goes on). It reports:

* **end to end**: from a camera frame's stamp (the twin stamps the instant it renders, as the D435i
  stamps its exposure) to the first servo setpoint computed from the chunk that answered it, p50
  and p95: the driver measures it per chunk (the policy node stamps each chunk with its oldest
  frame's stamp) and publishes it in its diagnostics (``observation_to_setpoint_ms``);
* its parts seen from here: the frame's age when the chunk arrived on the topic, and the policy's
  own compute time per chunk (``compute_time_s``).

``latency.json`` in ``--output`` keeps the figures and the setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.paths import run_directory
from fedvla.robot.runtime import LATENCY_KEY
from fedvla.twin.evaluation import checkpoint_action_space, checkpoint_detector
from fedvla.twin.tasks import TASKS
from fedvla_ros.tools.twin_session import TwinNode, exit_with, running_twin, scene_parser_arguments

LATENCY_FILE = "latency.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedvla bench twin --checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory (trained on twin data)")
    parser.add_argument("--detector", default="", help="the scene parser's detector, for a policy that uses IOSP")
    parser.add_argument("--task", default="open_drawer", choices=list(TASKS))
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="time the policy drives")
    parser.add_argument("--fps", type=float, default=30.0, help="camera rate of the twin (the D435i's 30)")
    parser.add_argument("--output", default="", help="run directory (default runs/twin_latency_<date>_<time>)")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    return parser.parse_args(argv)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "n": len(values)}


class LatencyNode(TwinNode):
    """Reads the policy's chunks with the time each arrived (the frame's age on arrival)."""

    def __init__(self, context) -> None:
        from fedvla_ros.qos import ACTION_CHUNK_QOS

        super().__init__(context, "twin_latency")
        self.arrivals_ms: list[float] = []
        self.compute_ms: list[float] = []
        self.node.create_subscription(self.ActionChunk, topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK),
                                      self._on_chunk, ACTION_CHUNK_QOS)

    def _on_chunk(self, msg) -> None:
        stamp = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        self.arrivals_ms.append(1000.0 * (time.time() - stamp))
        self.compute_ms.append(1000.0 * msg.compute_time_s)


def measure(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint).expanduser().resolve()
    checkpoint_action_space(checkpoint)
    detector = checkpoint_detector(checkpoint, args.detector)
    output = Path(args.output or run_directory("twin_latency")).resolve()
    output.mkdir(parents=True, exist_ok=True)
    arguments = {"execute": "false", "task": args.task, "twin_fps": str(args.fps), "checkpoint": str(checkpoint),
                 **scene_parser_arguments(detector)}
    with running_twin(arguments, output, LatencyNode, args.startup_timeout) as (ros, _, _):
        ros.keep_instruction(ros.reset_and_recover(args.task, args.seed))
        ros.spin_for(2.0)  # the policy takes the instruction; its first chunks
        ros.arrivals_ms.clear(), ros.compute_ms.clear()
        ros.enable(True)
        deadline, recoveries = time.monotonic() + args.seconds, 0
        while time.monotonic() < deadline:
            ros.spin_for(0.5)
            if ros.driver_fault:  # (an untrained policy may drive into the table: go on measuring)
                recoveries += 1
                ros.call(ros.recover_client, ros.Trigger.Request())
                ros.spin_for(1.2)
        ros.spin_for(1.2)  # the driver's diagnostics (1 Hz) covering the last chunks
        values = dict(ros.driver_values)
        ros.enable(False)
    end_to_end = {k.split(".")[-1]: float(v) for k, v in values.items() if k.startswith(LATENCY_KEY + ".")}
    figures = {"end_to_end_ms": end_to_end, "frame_age_on_arrival_ms": percentiles(ros.arrivals_ms),
               "policy_compute_ms": percentiles(ros.compute_ms), "recoveries": recoveries,
               "setting": {"checkpoint": str(checkpoint), "detector": str(detector or ""), "task": args.task,
                           "seconds": args.seconds, "camera_fps": args.fps,
                           "command": "fedvla bench twin " + " ".join(sys.argv[1:])}}
    (output / LATENCY_FILE).write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "setting"}))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_with(lambda: measure(args))
