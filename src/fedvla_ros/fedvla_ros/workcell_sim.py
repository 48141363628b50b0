"""workcell_sim: the MuJoCo twin of the paper's workcell, standing in for the robot and its camera
(:mod:`fedvla.twin`). It serves what the hardware serves, so ``real_robot`` runs against it unchanged:

* a UR3 controller on ``host`` (RTDE 30004, dashboard 29999, script 30003: ur_rtde's fixed ports),
  whose joints move in MuJoCo;
* the D435i's realsense-ros topics ``/camera/camera/color/image_raw``, ``.../color/camera_info``,
  ``.../aligned_depth_to_color/image_raw`` and ``.../aligned_depth_to_color/camera_info`` in frame
  ``camera_color_optical_frame``, at ``fps`` or as fast as rendering allows (the node logs the
  rate it reaches);
* ``~/reset`` (fedvla_interfaces/ResetScene: task, seed) and ``~/task_status``
  (fedvla_interfaces/TaskStatus, latched, ``status_rate_hz``): the episode's success check.

Parameters: the fields of :class:`fedvla.twin.workcell.WorkcellConfig` and
:class:`fedvla.twin.scene.SceneConfig`, plus ``fps``, ``status_rate_hz`` and ``optical_frame_id``.

The controller and the physics run in a child process (:mod:`fedvla.twin.process`), so that
rendering and ROS never delay its 125 Hz cycle; this node renders snapshots of the physics.
"""
from __future__ import annotations

import os
import threading
import time

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from fedvla import topics
from fedvla.config import ConfigError
from fedvla.twin.camera import TwinCamera
from fedvla.twin.process import WorkcellProcess
from fedvla.twin.scene import SceneConfig
from fedvla.twin.tasks import task_named
from fedvla.twin.workcell import WorkcellConfig
from fedvla_interfaces.msg import TaskStatus
from fedvla_interfaces.srv import ResetScene
from fedvla_ros.conversions import frame_messages
from fedvla_ros.node_main import StartupError, main_for
from fedvla_ros.parameters import declare, declare_config
from fedvla_ros.qos import LATCHED_QOS


RENDER_NICENESS = 10


class WorkcellSimNode(Node):
    def __init__(self) -> None:
        super().__init__("workcell_sim")
        self.config = declare_config(self, WorkcellConfig)
        self.scene = declare_config(self, SceneConfig)
        self.fps = float(declare(self, "fps", 30.0, "camera frames per second to aim for (the D435i's 30)"))
        status_rate = float(declare(self, "status_rate_hz", 10.0, "how often the success check is published"))
        self.frame_id = declare(self, "optical_frame_id", "camera_color_optical_frame",
                                "frame of the colour optical axis (realsense-ros; the URDF places it)")
        camera = topics.camera_node(topics.TWIN_CAMERA)
        qos = qos_profile_sensor_data
        self._camera_pubs = (
            self.create_publisher(Image, topics.node_topic(camera, topics.COLOR_IMAGE), qos),
            self.create_publisher(CameraInfo, topics.node_topic(camera, topics.COLOR_INFO), qos),
            self.create_publisher(Image, topics.node_topic(camera, topics.ALIGNED_DEPTH_IMAGE), qos),
            self.create_publisher(CameraInfo, topics.node_topic(camera, topics.ALIGNED_DEPTH_INFO), qos))
        self._status_pub = self.create_publisher(TaskStatus, topics.private_topic(topics.TASK_STATUS), LATCHED_QOS)
        try:
            self.workcell = WorkcellProcess(self.config, self.scene)
        except OSError as err:
            raise StartupError(f"cannot serve the UR controller ports on {self.config.host} ({err}): another "
                               "workcell_sim, URSim or robot driver holds them; stop it or give another loopback "
                               "address (robot_ip:=127.0.0.2)") from None
        self.camera = TwinCamera(self.scene)
        self._log_index = 0
        self.create_service(ResetScene, topics.private_topic(topics.RESET_SCENE_SERVICE), self._on_reset)
        self.create_timer(1.0 / status_rate, self._publish_status)
        self.frames_published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._render_loop, name="render", daemon=True)
        self._thread.start()
        episode = self.workcell.episode
        self.get_logger().info(
            f"workcell twin: {task_named(episode.task).title} (seed {episode.seed}), UR3 controller on "
            f"{self.config.host} ({self.config.ur_type}, {'125' if self.config.ur_type == 'ur3' else '500'} Hz, "
            f"in its own process); instruction: {episode.instruction!r}")

    def _controller_log(self, source: str, message: str) -> None:
        """What a pendant would show: programs starting and stopping, safety events, the watchdog."""
        if source == "safety" or "watchdog" in message:
            self.get_logger().warn(f"controller: {message}")
        elif source == "script" and message.startswith(("program started", "program stopped")):
            self.get_logger().info(f"controller: {message}")

    def _on_reset(self, request: ResetScene.Request, response: ResetScene.Response) -> ResetScene.Response:
        try:
            episode = self.workcell.reset(request.task or None, request.seed)
        except ConfigError as err:
            response.success, response.message = False, str(err)
            self.get_logger().error(f"reset refused: {err}")
            return response
        response.success, response.instruction = True, episode.instruction
        response.message = f"{task_named(episode.task).title}, seed {episode.seed}"
        self.get_logger().info(f"reset: {response.message}; instruction {episode.instruction!r}")
        self._publish_status()
        return response

    def _publish_status(self) -> None:
        if not self.workcell.alive:
            self.get_logger().fatal("the workcell process died: the twin stops")
            self.context.try_shutdown()
            return
        self._log_index, lines = self.workcell.log_since(self._log_index)
        for source, message in lines:
            self._controller_log(source, message)
        status, episode, state = self.workcell.status(), self.workcell.episode, self.workcell.scene_state()
        objects = self.workcell.object_positions()
        msg = TaskStatus(task=episode.task, seed=episode.seed, instruction=episode.instruction,
                         success=status.success, detail=status.detail, sim_time=state.time_s,
                         object_names=list(objects),
                         object_positions=[float(v) for p in objects.values() for v in p])
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        self._status_pub.publish(msg)

    def _render_loop(self) -> None:
        # The camera yields to the robot: rendering is the twin's heaviest work, and on a small
        # machine it must not starve the controller's cycle or the driver (their watchdog is 100 ms).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RENDER_NICENESS)
        except (AttributeError, OSError):  # not Linux, or not permitted: render at normal priority
            pass
        period = 1.0 / self.fps
        next_time = time.monotonic()
        window_start, window_frames = time.monotonic(), 0
        try:
            while not self._stop.is_set() and self.context.ok():
                captured = self.get_clock().now()  # the scene's instant, as a camera stamps its exposure
                frame = self.camera.render(self.workcell.scene_state(), depth=True)
                color, info, depth = frame_messages(frame, captured.to_msg(), self.frame_id)
                for publisher, message in zip(self._camera_pubs, (color, info, depth, info)):
                    publisher.publish(message)
                self.frames_published += 1
                window_frames += 1
                if time.monotonic() - window_start >= 30.0:
                    rate = window_frames / (time.monotonic() - window_start)
                    level = self.get_logger().info if rate >= 0.9 * self.fps else self.get_logger().warn
                    level(f"camera: {rate:.1f} frames/s (aim {self.fps:g}; rendering is the limit below it)")
                    window_start, window_frames = time.monotonic(), 0
                next_time = max(next_time + period, time.monotonic() - period)
                self._stop.wait(max(0.0, next_time - time.monotonic()))
        except Exception as err:  # a dead render thread must not leave a silent twin behind
            if self.context.ok():
                self.get_logger().fatal(f"rendering failed: {err!r}")
                self.context.try_shutdown()
        finally:
            self.camera.close()

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self.workcell.stop()
        super().destroy_node()


main = main_for(WorkcellSimNode, "workcell_sim")
