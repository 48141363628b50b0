"""The workcell twin's MuJoCo model: built from the URDF Pinocchio reads (same kinematics), a gripper
that holds objects by friction only, contact forces that stop the arm, and the four tasks' layouts
and success checks."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pin = pytest.importorskip("pinocchio")

from fedvla.config import ConfigError  # noqa: E402
from fedvla.robot.ik import IkSolver  # noqa: E402
from fedvla.robot.kinematics import HOME_Q, ArmKinematics, find_urdf  # noqa: E402
from fedvla.twin.plant import MujocoPlant  # noqa: E402
from fedvla.twin.scene import SceneConfig, build_spec  # noqa: E402
from fedvla.twin.tasks import TASKS, compile_task_model, task_named  # noqa: E402

PERIOD = 0.008  # a CB3 controller cycle


@pytest.fixture(scope="module")
def kinematics():
    return ArmKinematics()


def test_mujoco_and_pinocchio_agree_on_the_tool_pose(kinematics) -> None:
    model = build_spec(SceneConfig()).compile()
    data = mujoco.MjData(model)
    arm = [model.joint(j).qposadr[0] for j in kinematics.joint_names]
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = np.asarray(HOME_Q) + rng.uniform(-1.0, 1.0, 6)
        data.qpos[arm] = q
        mujoco.mj_kinematics(model, data)
        pose = kinematics.fk(q)
        np.testing.assert_allclose(data.body("tcp").xpos, pose.translation, atol=1e-9)
        np.testing.assert_allclose(data.body("tcp").xmat.reshape(3, 3), pose.rotation, atol=1e-9)


def test_a_urdf_whose_joints_do_not_match_the_twin_is_refused(tmp_path) -> None:
    root = ET.parse(find_urdf()).getroot()
    for joint in root.findall("joint"):
        if joint.get("name") == "gripper_right_finger_joint":
            root.remove(joint)
    broken = tmp_path / "no_mimic.urdf"
    broken.write_text(ET.tostring(root, encoding="unicode"))
    with pytest.raises(ConfigError, match="has no joint gripper_right_finger_joint: its joints do not match"):
        build_spec(SceneConfig(urdf_path=str(broken)))
    with pytest.raises(ConfigError, match="does not exist"):
        build_spec(SceneConfig(urdf_path=str(tmp_path / "missing.urdf")))
    with pytest.raises(ConfigError, match="not a D435i colour mode"):
        SceneConfig(image_width=320, image_height=240)


def test_an_unknown_task_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown task 'fold_laundry'.*clean_up, trash_collection, open_drawer, "
                                          "sorting_pills"):
        task_named("fold_laundry")


@pytest.mark.parametrize("name", list(TASKS))
def test_layouts_are_seeded_and_vary(name) -> None:
    task = task_named(name)
    a, b, c = task.episode(1), task.episode(1), task.episode(2)
    assert a == b
    assert a.positions != c.positions
    assert a.instruction
    for label in task.labels.values():  # the instruction names objects the detector knows
        assert label.islower()


class Arm:
    """A MuJoCo plant driven the way the controller drives it: joint targets every period."""

    def __init__(self, task: str, seed: int, kinematics) -> None:
        from fedvla.twin.workcell import Workcell, WorkcellConfig

        self.workcell = Workcell(WorkcellConfig(task=task, seed=seed))  # not started: no sockets
        self.plant: MujocoPlant = self.workcell.plant
        self.kinematics, self.ik = kinematics, IkSolver(kinematics)
        self.q = np.asarray(HOME_Q, dtype=float)
        self.down = kinematics.fk(self.q).rotation
        self.closed = False
        self.worst_force = 0.0

    def move_to(self, xyz, seconds: float = 1.0) -> None:
        result = self.ik.solve(pin.SE3(self.down, np.asarray(xyz, dtype=float)), self.q)
        assert result.converged, xyz
        start, n = self.q, int(seconds / PERIOD)
        for i in range(n):
            self.q = start + (result.q - start) * min(1.0, (i + 1) / (0.8 * n))
            step = self.plant.step(self.q, self.closed, PERIOD)
            self.worst_force = max(self.worst_force, step.contact_force_n)

    def grip(self, closed: bool, seconds: float = 0.5) -> None:
        self.closed = closed
        self.move_to(self.kinematics.fk(self.q).translation, seconds)

    def body(self, name: str) -> np.ndarray:
        return self.plant.data.body(name).xpos.copy()


def test_the_gripper_lifts_a_bottle_by_friction_and_drops_it_into_the_named_tray(kinematics) -> None:
    arm = Arm("sorting_pills", 4, kinematics)
    episode = arm.workcell.episode
    bottle = arm.body("bottle")
    arm.move_to(bottle + [0, 0, 0.12])
    arm.move_to(bottle + [0, 0, 0.005])
    arm.grip(True)
    arm.move_to(bottle + [0, 0, 0.15])
    lifted = arm.body("bottle")
    assert lifted[2] > bottle[2] + 0.12  # held: nothing welds it, friction carries it
    assert arm.plant.model.neq == 1  # the only equality is the fingers' mimic, no weld
    tray = arm.body(f"{episode.target_colour}_tray")
    arm.move_to(tray + [0, 0, 0.16], 1.5)
    arm.move_to(tray + [0, 0, 0.07])
    assert not arm.workcell.status().success
    arm.grip(False)
    arm.move_to(tray + [0, 0, 0.18])
    status = arm.workcell.status()
    assert status.success, status.detail
    assert arm.worst_force < arm.plant.config.protective_stop_force_n


def test_pushing_the_tool_into_the_table_is_over_the_force_limit(kinematics) -> None:
    arm = Arm("clean_up", 0, kinematics)
    arm.move_to([0.25, 0.2, 0.08])
    assert arm.worst_force < arm.plant.config.protective_stop_force_n
    arm.move_to([0.25, 0.2, -0.03], 0.5)  # 3 cm into the table top
    assert arm.worst_force > arm.plant.config.protective_stop_force_n


def test_success_checks_follow_the_objects(kinematics) -> None:
    arm = Arm("trash_collection", 2, kinematics)
    data = arm.plant.data
    assert not arm.workcell.status().success
    bin_floor = arm.body("bin")
    address = arm.plant.model.body("paper").jntadr[0]
    data.qpos[arm.plant.model.jnt_qposadr[address]:][:3] = bin_floor + [0.01, -0.01, 0.03]
    mujoco.mj_forward(arm.plant.model, data)
    assert arm.workcell.status().success
    drawer = Arm("open_drawer", 2, kinematics)
    drawer.plant.data.joint("drawer_slide").qpos[0] = 0.1
    mujoco.mj_forward(drawer.plant.model, drawer.plant.data)
    assert drawer.workcell.status().success
    assert "drawer out 10.0 cm" in drawer.workcell.status().detail


def test_every_task_model_compiles_with_its_labelled_bodies() -> None:
    for task in TASKS.values():
        model = compile_task_model(task, SceneConfig())
        for body in task.labels:
            assert model.body(body).id > 0
