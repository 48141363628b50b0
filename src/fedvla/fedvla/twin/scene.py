"""The workcell as a MuJoCo model: the arm and gripper from ``urdf/ur3_gripper.urdf`` (the file
Pinocchio and RViz read, so the three agree on the kinematics), a table, lights, the D435i's colour
camera and one task's objects (:mod:`fedvla.twin.tasks`).

What the URDF does not say, and this module adds:

* **Actuators.** A joint position servo per arm joint, limited to the URDF's effort and position
  limits, with gravity compensated on the arm's links (a UR controller feeds its dynamic model
  forward, so servoJ targets are tracked within a few milliseconds, not sagged under load).
* **Gripper.** The finger joint is a force-limited position servo (:attr:`SceneConfig.gripper_force_n`)
  and the right finger follows the left by an equality constraint (the URDF's ``mimic``). Objects
  are held by contact and friction only: elliptic friction cones, torsional friction on the
  fingertips and ``impratio`` 10, MuJoCo's recommendations for stable grasps. Nothing is welded.
* **Camera.** A MuJoCo camera on ``camera_color_optical_frame`` (turned half a turn about x: MuJoCo
  cameras look along -z with y up, ROS optical frames along +z with y down), with the vertical field
  of view of the D435i's colour sensor (:attr:`SceneConfig.vertical_fov_deg`).

The robot stands on the table: ``base_link`` is the world origin, the table top is z = 0 and the
workspace lies in front of the robot, towards +x.
"""
from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from fedvla.config import ConfigError, require_positive
from fedvla.robot.kinematics import ARM_JOINTS, GRIPPER_JOINT, find_urdf

MIMIC_JOINT = "gripper_right_finger_joint"
CAMERA_BODY = "camera_color_optical_frame"
CAMERA_NAME = "d435i_color"
TCP_BODY = "tcp"
FINGER_BODIES = ("gripper_left_finger", "gripper_right_finger")
# Links whose contacts with anything but a graspable object count towards a protective stop.
ARM_BODIES = ("base_link_inertia", "shoulder_link", "upper_arm_link", "forearm_link", "wrist_1_link",
              "wrist_2_link", "wrist_3_link", "gripper_base_link", *FINGER_BODIES)
TABLE_SIZE = (0.9, 0.8)  # m, x by y; the robot stands 0.15 m from its near edge
TABLE_CENTRE_X = 0.3
_LINK_RGBA = {"gripper": (0.12, 0.12, 0.12, 1.0), "camera": (0.5, 0.5, 0.55, 1.0),
              "shoulder_link": (0.25, 0.45, 0.7, 1.0), "wrist": (0.25, 0.45, 0.7, 1.0)}


@dataclasses.dataclass(kw_only=True)
class SceneConfig:
    """How the workcell is simulated. Field names are also ``workcell_sim`` parameter names."""

    urdf_path: str = ""  # empty: the packaged urdf/ur3_gripper.urdf
    timestep_s: float = 0.002
    gripper_force_n: float = 60.0  # 2F-85 class grippers close with 20-235 N
    finger_friction: float = 1.2
    # D435i colour at 640x480: fx = fy ~ 615 px, so 2 atan(240 / 615) = 42.6 degrees vertically.
    image_width: int = 640
    image_height: int = 480
    vertical_fov_deg: float = 42.6

    def __post_init__(self) -> None:
        for name in ("timestep_s", "gripper_force_n", "finger_friction", "vertical_fov_deg"):
            require_positive(getattr(self, name), name)
        if self.image_width not in (640, 1280) or self.image_height not in (480, 720) or \
                (self.image_width, self.image_height) not in ((640, 480), (1280, 720)):
            raise ConfigError("image_width", f"{self.image_width}x{self.image_height} is not a D435i colour mode "
                              "the twin renders", "640x480 or 1280x720")

    def resolved_urdf(self) -> Path:
        path = Path(self.urdf_path).expanduser() if self.urdf_path else find_urdf()
        if not path.is_file():
            raise ConfigError("urdf_path", f"{path} does not exist", "a URDF file, e.g. urdf/ur3_gripper.urdf")
        return path

    @property
    def focal_px(self) -> float:
        return (self.image_height / 2) / np.tan(np.radians(self.vertical_fov_deg) / 2)


def _named_urdf(path: Path) -> str:
    """The URDF with every visual and collision named after its link (MuJoCo warns about unnamed
    geoms), and the joint set checked against what the twin drives."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ConfigError("urdf_path", f"{path} is not valid XML ({err})", "a URDF file") from None
    joints = {j.get("name"): j.get("type") for j in root.iter("joint")}
    missing = [j for j in (*ARM_JOINTS, GRIPPER_JOINT, MIMIC_JOINT) if j not in joints]
    if missing:
        raise ConfigError("urdf_path", f"{path.name} has no joint {', '.join(missing)}: its joints do not match "
                          f"the twin's UR3 with a parallel gripper",
                          f"a URDF with the joints {', '.join((*ARM_JOINTS, GRIPPER_JOINT, MIMIC_JOINT))}")
    wrong = [j for j in ARM_JOINTS if joints[j] not in ("revolute", "continuous")] + \
        [j for j in (GRIPPER_JOINT, MIMIC_JOINT) if joints[j] != "prismatic"]
    if wrong:
        raise ConfigError("urdf_path", f"{path.name}: joint {wrong[0]} is {joints[wrong[0]]}, not what the twin drives",
                          "revolute arm joints and prismatic finger joints")
    links = {link.get("name") for link in root.iter("link")}
    for body in (TCP_BODY, CAMERA_BODY):
        if body not in links:
            raise ConfigError("urdf_path", f"{path.name} has no link {body!r}", f"a URDF with the link {body}")
    for link in root.iter("link"):
        for kind in ("visual", "collision"):
            for i, element in enumerate(link.findall(kind)):
                element.set("name", f"{link.get('name')}_{kind}_{i}")
    return ET.tostring(root, encoding="unicode")


def _link_rgba(body: str) -> tuple[float, ...]:
    for key, rgba in _LINK_RGBA.items():
        if key in body:
            return rgba
    return (0.72, 0.72, 0.72, 1.0)


def build_spec(config: SceneConfig):
    """The workcell without task objects, as an ``mujoco.MjSpec`` to add them to."""
    import mujoco

    urdf = config.resolved_urdf()
    spec = mujoco.MjSpec.from_string(_named_urdf(urdf))
    spec.modelname = "fedvla_workcell"
    spec.compiler.fusestatic = False  # keep tcp and the camera frames as bodies
    spec.compiler.discardvisual = True  # collision geoms are the ones drawn
    spec.option.timestep = config.timestep_s
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    spec.option.noslip_iterations = 3
    spec.visual.global_.offwidth = max(config.image_width, 640)
    spec.visual.global_.offheight = max(config.image_height, 480)
    spec.visual.quality.shadowsize = 2048

    joints = {j.name: j for j in spec.joints}
    efforts = _urdf_efforts(urdf)
    for body in spec.bodies:
        if body.name in ARM_BODIES:
            body.gravcomp = 1.0
        for geom in body.geoms:
            geom.rgba = _link_rgba(body.name)
            if body.name in FINGER_BODIES:
                geom.friction = [config.finger_friction, 0.02, 0.0002]
                geom.condim = 4
    # Stiff servos, as a UR's joint position control is: a 3 cm push into the table reaches the
    # protective-stop force instead of sagging.
    kp = dict(zip(ARM_JOINTS, (3000.0, 3000.0, 2000.0, 600.0, 600.0, 600.0)))
    for name in ARM_JOINTS:
        joint = joints[name]
        joint.armature = 0.05
        joint.damping = 1.0
        actuator = spec.add_actuator(name=name, target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        _position_servo(actuator, kp=kp[name], kv=2.0 * np.sqrt(kp[name] * 0.3))
        actuator.ctrlrange = list(joint.range)
        actuator.ctrllimited = True
        actuator.forcerange = [-efforts[name], efforts[name]]
        actuator.forcelimited = True
    for name in (GRIPPER_JOINT, MIMIC_JOINT):
        joints[name].armature = 0.01
        joints[name].damping = 5.0
    finger = spec.add_actuator(name="gripper", target=GRIPPER_JOINT, trntype=mujoco.mjtTrn.mjTRN_JOINT)
    _position_servo(finger, kp=2000.0, kv=40.0)
    finger.ctrlrange = list(joints[GRIPPER_JOINT].range)
    finger.ctrllimited = True
    finger.forcerange = [-config.gripper_force_n, config.gripper_force_n]
    finger.forcelimited = True
    spec.add_equality(type=mujoco.mjtEq.mjEQ_JOINT, name1=MIMIC_JOINT, name2=GRIPPER_JOINT,
                      data=[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])

    # The links' collision cylinders are coarse, and a UR controller does not stop on its own links
    # touching: no contacts between the arm's own links.
    for i, first in enumerate(ARM_BODIES):
        for second in ARM_BODIES[i + 1:]:
            spec.add_exclude(bodyname1=first, bodyname2=second)

    world = spec.worldbody
    world.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.1], pos=[0, 0, -0.75],
                   rgba=[0.35, 0.35, 0.38, 1])
    half_x, half_y = TABLE_SIZE[0] / 2, TABLE_SIZE[1] / 2
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=[half_x, half_y, 0.02],
                   pos=[TABLE_CENTRE_X, 0, -0.02], rgba=[0.62, 0.5, 0.38, 1], friction=[0.8, 0.005, 0.0001])
    world.add_light(name="ceiling", pos=[0.3, 0, 1.6], dir=[0, 0, -1], diffuse=[0.7, 0.7, 0.7],
                    castshadow=True)
    world.add_light(name="window", pos=[0.9, 0.8, 1.0], dir=[-0.5, -0.6, -0.6], diffuse=[0.3, 0.3, 0.3],
                    castshadow=False)
    camera_body = spec.body(CAMERA_BODY)
    camera_body.add_camera(name=CAMERA_NAME, quat=[0, 1, 0, 0], fovy=config.vertical_fov_deg)
    return spec


def _position_servo(actuator, kp: float, kv: float) -> None:
    """A position servo, force = kp (ctrl - q) - kv qdot (MJCF's ``<position>``)."""
    import mujoco

    actuator.gaintype = mujoco.mjtGain.mjGAIN_FIXED
    actuator.biastype = mujoco.mjtBias.mjBIAS_AFFINE
    actuator.gainprm[0] = kp
    actuator.biasprm[:3] = [0.0, -kp, -kv]


def _urdf_efforts(path: Path) -> dict[str, float]:
    root = ET.parse(path).getroot()
    efforts = {}
    for joint in root.iter("joint"):
        limit = joint.find("limit")
        if limit is not None and limit.get("effort"):
            efforts[joint.get("name")] = float(limit.get("effort"))
    return {name: efforts.get(name, 28.0) for name in ARM_JOINTS}
