"""``python -m fedvla.twin --task open_drawer --seed 3 --host 127.0.0.1``: the twin's UR controller
alone, without ROS and without the camera (the ``workcell_sim`` node adds the camera topics and the
scene services). ur_rtde programs, URSim-style tests and benchmarks connect to it on ``host``. It
prints ``ready <host>`` once it listens, then one status line per reset read from stdin
(``reset <task> <seed>``, ``status``, ``quit``)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from fedvla.config import ConfigError
    from fedvla.twin.scene import SceneConfig
    from fedvla.twin.tasks import TASKS
    from fedvla.twin.workcell import Workcell, WorkcellConfig

    parser = argparse.ArgumentParser(prog="python -m fedvla.twin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="clean_up", help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ur-type", default="ur3", choices=("ur3", "ur3e"))
    parser.add_argument("--urdf", default="", help="URDF of the arm (default: the packaged ur3_gripper.urdf)")
    args = parser.parse_args(argv)
    try:
        workcell = Workcell(WorkcellConfig(task=args.task, seed=args.seed, host=args.host, ur_type=args.ur_type),
                            SceneConfig(urdf_path=args.urdf))
        workcell.start()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot serve the UR controller ports on {args.host} ({err}): stop what holds them "
              "or give another loopback address (--host 127.0.0.2)", file=sys.stderr)
        return 1
    print(f"ready {args.host}", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            try:
                if words[0] == "reset":
                    workcell.reset(words[1] if len(words) > 1 else None, int(words[2]) if len(words) > 2 else None)
                status = workcell.status()
                print(f"{'success' if status.success else 'running'} {workcell.episode.task} "
                      f"{workcell.episode.seed} t={workcell.sim_time_s:.3f} {status.detail}", flush=True)
            except (ConfigError, ValueError) as err:
                print(f"error: {err}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        workcell.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
