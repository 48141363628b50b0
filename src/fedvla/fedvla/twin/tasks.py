"""The paper's four real-world tasks (FedVLA §4.2, Fig. 4) as MuJoCo scenes: their objects, the
randomised layout of an episode, the instruction and a success check.

* **Clean Up** - "wipe the trash off the plate with the sponge". The paper's cloth is a rigid
  sponge here: MuJoCo's cloth (flex) cannot be grasped reliably by friction at a servo rate the
  twin keeps in real time on two cores. Success: the trash lies off the plate.
* **Trash Collection** - "throw the crumpled paper into the trash bin", beside a can and a cup
  (the task with the most objects, where IOSP matters most). The crumpled paper is a rigid
  ellipsoid. Success: the paper is inside the bin, below its rim.
* **Open Drawer** - "open the drawer": grasp the handle and pull. Success: the drawer is out by at
  least :data:`DRAWER_OPEN_M`.
* **Sorting Pills** - "put the pill bottle into the <colour> tray", three trays of different colours
  in a shuffled order. Success: the bottle rests inside the tray of the named colour.

Every layout draws object positions, the tray order and the lighting from the episode's seed, so a
(task, seed) pair names one episode exactly. Positions are in ``base_link`` (the world frame of the
twin: the table top is z = 0).
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

from fedvla.config import ConfigError
from fedvla.twin.scene import SceneConfig, build_spec

DRAWER_OPEN_M = 0.08
DRAWER_TRAVEL_M = 0.15
TRAY_COLOURS = {"red": (0.8, 0.15, 0.12, 1.0), "green": (0.15, 0.6, 0.2, 1.0), "blue": (0.15, 0.3, 0.8, 1.0)}


@dataclasses.dataclass(frozen=True)
class Episode:
    """One randomised episode: what to say, and where things are."""

    task: str
    seed: int
    instruction: str
    positions: dict[str, tuple[float, float, float]]  # body -> initial position (m, base_link)
    target_colour: str = ""  # Sorting Pills: the tray named by the instruction


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    success: bool
    detail: str  # what the checker measured, for logs and the success topic


def _geom(body, mujoco, kind: str, size: Sequence[float], rgba: Sequence[float], pos=(0, 0, 0), **extra):
    types = {"box": mujoco.mjtGeom.mjGEOM_BOX, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
             "capsule": mujoco.mjtGeom.mjGEOM_CAPSULE, "ellipsoid": mujoco.mjtGeom.mjGEOM_ELLIPSOID}
    size = [*size, 0.0, 0.0][:3]  # MjSpec wants three numbers whatever the shape uses
    return body.add_geom(type=types[kind], size=size, rgba=list(rgba), pos=list(pos), **extra)


def _free_body(spec, mujoco, name: str, pos: Sequence[float]):
    body = spec.worldbody.add_body(name=name, pos=list(pos))
    body.add_freejoint(name=f"{name}_free")
    return body


GRASPABLE = dict(condim=4, friction=[1.0, 0.02, 0.0002])
# A ball of crumpled paper does not roll like a marble: rolling friction (condim 6), 5 mm. Without
# it the ellipsoid, settling at a reset, kept rolling at 2-3 cm/s and the gripper chased it.
CRUMPLED = dict(condim=6, friction=[1.0, 0.02, 0.005])


class WorkcellTask(abc.ABC):
    """One task: its objects (added to the model once), an episode's layout, and its success test."""

    name: str
    title: str
    # body name -> the object's name as the detector and the instruction say it
    labels: dict[str, str]

    @abc.abstractmethod
    def add_objects(self, spec) -> None:
        """Add this task's bodies to the workcell ``spec`` (positions are set per episode)."""

    @abc.abstractmethod
    def layout(self, rng: np.random.Generator) -> tuple[dict[str, tuple[float, float, float]], str]:
        """(initial position of every task body, target colour or "") for one episode."""

    @abc.abstractmethod
    def instruction(self, target_colour: str) -> str: ...

    @abc.abstractmethod
    def status(self, model, data, episode: Episode) -> TaskStatus: ...

    def episode(self, seed: int) -> Episode:
        rng = np.random.default_rng([seed, _stable_id(self.name)])
        positions, colour = self.layout(rng)
        return Episode(task=self.name, seed=seed, instruction=self.instruction(colour), positions=positions,
                       target_colour=colour)


def _stable_id(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name))


def _spread(rng: np.random.Generator, boxes: Sequence[tuple[float, float, float, float]], min_gap: float,
            placed: Sequence[np.ndarray] = (), keep_out: Sequence[tuple[np.ndarray, float]] = ()) -> list[np.ndarray]:
    """One xy point per (x_lo, x_hi, y_lo, y_hi) box, at least ``min_gap`` from every other point
    and outside every ``keep_out`` square (centre, half side)."""
    points = list(placed)
    out = []
    for x_lo, x_hi, y_lo, y_hi in boxes:
        for _ in range(200):
            p = np.array([rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)])
            if all(np.linalg.norm(p - q) >= min_gap for q in points) and \
                    all(np.abs(p - centre).max() >= half for centre, half in keep_out):
                break
        points.append(p)
        out.append(p)
    return out


def _xyz(p: np.ndarray, z: float) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(z))


class CleanUp(WorkcellTask):
    name, title = "clean_up", "Clean Up"
    labels = {"plate": "plate", "trash": "trash", "sponge": "sponge"}
    PLATE_RADIUS, PLATE_TOP = 0.07, 0.012
    TRASH_HALF = 0.014
    SPONGE_HALF = (0.02, 0.045, 0.02)  # x (across the fingers), y, z

    def add_objects(self, spec) -> None:
        import mujoco

        plate = spec.worldbody.add_body(name="plate", pos=[0.3, -0.08, 0])
        _geom(plate, mujoco, "cylinder", [self.PLATE_RADIUS, self.PLATE_TOP / 2], [0.93, 0.93, 0.9, 1],
              pos=[0, 0, self.PLATE_TOP / 2], friction=[0.4, 0.005, 0.0001])
        trash = _free_body(spec, mujoco, "trash", [0.3, -0.08, 0.05])
        _geom(trash, mujoco, "box", [self.TRASH_HALF] * 3, [0.45, 0.3, 0.2, 1], mass=0.01, **GRASPABLE)
        sponge = _free_body(spec, mujoco, "sponge", [0.3, 0.12, 0.05])
        _geom(sponge, mujoco, "box", self.SPONGE_HALF, [0.95, 0.85, 0.2, 1], mass=0.03, **GRASPABLE)

    def layout(self, rng):
        plate, sponge = _spread(rng, [(0.28, 0.36, -0.14, -0.02), (0.24, 0.36, 0.1, 0.2)], 0.16)
        trash = plate + rng.uniform(-0.02, 0.02, 2)
        return {"plate": _xyz(plate, 0.0), "trash": _xyz(trash, self.PLATE_TOP + self.TRASH_HALF + 0.001),
                "sponge": _xyz(sponge, self.SPONGE_HALF[2] + 0.001)}, ""

    def instruction(self, target_colour: str) -> str:
        return "wipe the trash off the plate with the sponge"

    def status(self, model, data, episode):
        offset = float(np.linalg.norm(data.body("trash").xpos[:2] - data.body("plate").xpos[:2]))
        off = offset > self.PLATE_RADIUS + 0.005
        return TaskStatus(off, f"trash {offset * 100:.1f} cm from the plate's centre "
                               f"(off the plate beyond {(self.PLATE_RADIUS + 0.005) * 100:.1f} cm)")


class TrashCollection(WorkcellTask):
    name, title = "trash_collection", "Trash Collection"
    labels = {"paper": "crumpled paper", "bin": "trash bin", "can": "can", "cup": "cup"}
    BIN_INNER, BIN_HEIGHT, BIN_WALL = 0.075, 0.09, 0.006  # inner half width
    PAPER_RADII = (0.026, 0.024, 0.024)  # a ball of paper about 5 cm across

    def add_objects(self, spec) -> None:
        import mujoco

        bin_body = spec.worldbody.add_body(name="bin", pos=[0.35, -0.17, 0])
        grey = [0.35, 0.38, 0.4, 1]
        h, w, t = self.BIN_HEIGHT / 2, self.BIN_INNER, self.BIN_WALL / 2
        _geom(bin_body, mujoco, "box", [w + 2 * t, w + 2 * t, t], grey, pos=[0, 0, t])
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            size = [t, w + 2 * t, h] if sx else [w + 2 * t, t, h]
            _geom(bin_body, mujoco, "box", size, grey, pos=[sx * (w + t), sy * (w + t), h])
        paper = _free_body(spec, mujoco, "paper", [0.3, 0.1, 0.03])
        _geom(paper, mujoco, "ellipsoid", self.PAPER_RADII, [0.92, 0.92, 0.88, 1], mass=0.01, **CRUMPLED)
        can = _free_body(spec, mujoco, "can", [0.25, -0.05, 0.05])
        _geom(can, mujoco, "cylinder", [0.025, 0.05], [0.75, 0.1, 0.1, 1], mass=0.05, **GRASPABLE)
        cup = _free_body(spec, mujoco, "cup", [0.4, 0.15, 0.04])
        _geom(cup, mujoco, "cylinder", [0.03, 0.04], [0.2, 0.35, 0.8, 1], mass=0.05, **GRASPABLE)

    def layout(self, rng):
        bin_xy = np.array([rng.uniform(0.3, 0.4), rng.uniform(-0.22, -0.14)])
        # Nothing within an open gripper's reach of the bin's walls: the fingers straddling a ball of
        # paper that leans on the wall land on the wall (a protective stop in 7 of 50 demonstrations).
        clearance = self.BIN_INNER + self.BIN_WALL + 0.075
        paper, can, cup = _spread(rng, [(0.22, 0.4, 0.0, 0.2), (0.2, 0.42, -0.05, 0.22), (0.2, 0.42, -0.05, 0.22)],
                                  0.1, keep_out=[(bin_xy, clearance)])
        return {"bin": _xyz(bin_xy, 0.0), "paper": _xyz(paper, self.PAPER_RADII[2] + 0.001),
                "can": _xyz(can, 0.051), "cup": _xyz(cup, 0.041)}, ""

    def instruction(self, target_colour: str) -> str:
        return "throw the crumpled paper into the trash bin"

    def status(self, model, data, episode):
        rel = data.body("paper").xpos - data.body("bin").xpos
        inside = bool(np.all(np.abs(rel[:2]) < self.BIN_INNER) and rel[2] < self.BIN_HEIGHT)
        return TaskStatus(inside, f"paper at ({rel[0] * 100:.1f}, {rel[1] * 100:.1f}, {rel[2] * 100:.1f}) cm "
                                  f"from the bin's floor centre")


class OpenDrawer(WorkcellTask):
    name, title = "open_drawer", "Open Drawer"
    # The drawer is named with its handle: closed, the handle is all the camera sees of it.
    labels = {"cabinet": "cabinet", "drawer": "drawer"}
    HALF = (0.1, 0.12, 0.055)  # the cabinet's half extents; its front faces the robot (-x)
    # The bar stands 6 cm off the front: room for the far finger of the open gripper (4.25 cm + 1 cm).
    HANDLE_Z, HANDLE_OUT = 0.075, 0.06

    def add_objects(self, spec) -> None:
        import mujoco

        hx, hy, hz = self.HALF
        wood, t = [0.55, 0.38, 0.25, 1], 0.006
        cabinet = spec.worldbody.add_body(name="cabinet", pos=[0.45, 0.0, 0])
        _geom(cabinet, mujoco, "box", [hx, hy, t], wood, pos=[0, 0, 2 * hz - t])  # top
        _geom(cabinet, mujoco, "box", [hx, hy, t], wood, pos=[0, 0, t])  # bottom
        for sy in (1, -1):
            _geom(cabinet, mujoco, "box", [hx, t, hz], wood, pos=[0, sy * (hy - t), hz])
        _geom(cabinet, mujoco, "box", [t, hy, hz], wood, pos=[hx - t, 0, hz])  # back
        drawer = cabinet.add_body(name="drawer", pos=[0, 0, 0])
        drawer.add_joint(name="drawer_slide", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[-1, 0, 0],
                         range=[0, DRAWER_TRAVEL_M], damping=2.0, frictionloss=0.3)
        # The drawer fits the cavity with 3 mm to spare on every side: the cabinet is fixed to the
        # world, so MuJoCo does collide it with its child, the drawer.
        gap = 0.003
        cream = [0.85, 0.8, 0.7, 1]
        bottom, top = 2 * t + gap, 2 * hz - 2 * t - gap
        _geom(drawer, mujoco, "box", [t, hy - 2 * t - gap, (top - bottom) / 2], cream,
              pos=[-hx + t, 0, (top + bottom) / 2], mass=0.2)
        _geom(drawer, mujoco, "box", [hx - 2 * t - gap, hy - 2 * t - gap, t / 2], cream,
              pos=[0, 0, bottom + t / 2], mass=0.2)
        handle = drawer.add_body(name="drawer_handle", pos=[-hx - self.HANDLE_OUT, 0, self.HANDLE_Z])
        steel = [0.75, 0.75, 0.78, 1]
        _geom(handle, mujoco, "capsule", [0.008, 0.045], steel, quat=[0.7071068, 0.7071068, 0, 0],
              mass=0.02, **GRASPABLE)
        for sy in (1, -1):
            _geom(handle, mujoco, "box", [self.HANDLE_OUT / 2, 0.005, 0.005], steel,
                  pos=[self.HANDLE_OUT / 2, sy * 0.04, 0], mass=0.01)

    def layout(self, rng):
        return {"cabinet": (float(rng.uniform(0.42, 0.47)), float(rng.uniform(-0.1, 0.1)), 0.0)}, ""

    def instruction(self, target_colour: str) -> str:
        return "open the drawer"

    def status(self, model, data, episode):
        opened = float(data.joint("drawer_slide").qpos[0])
        return TaskStatus(opened >= DRAWER_OPEN_M, f"drawer out {max(opened, 0.0) * 100:.1f} cm "
                                                   f"(open from {DRAWER_OPEN_M * 100:.0f} cm)")


class SortingPills(WorkcellTask):
    name, title = "sorting_pills", "Sorting Pills"
    labels = {"bottle": "pill bottle", **{f"{c}_tray": f"{c} tray" for c in TRAY_COLOURS}}
    TRAY_INNER, TRAY_RIM = 0.05, 0.02
    BOTTLE = (0.018, 0.035)  # radius, half height

    def add_objects(self, spec) -> None:
        import mujoco

        for i, (colour, rgba) in enumerate(TRAY_COLOURS.items()):
            tray = spec.worldbody.add_body(name=f"{colour}_tray", pos=[0.4, -0.15 + 0.13 * i, 0])
            w, t = self.TRAY_INNER, 0.004
            _geom(tray, mujoco, "box", [w + 2 * t, w + 2 * t, t / 2], rgba, pos=[0, 0, t / 2])
            for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                size = [t, w + 2 * t, self.TRAY_RIM / 2] if sx else [w + 2 * t, t, self.TRAY_RIM / 2]
                _geom(tray, mujoco, "box", size, rgba, pos=[sx * (w + t), sy * (w + t), self.TRAY_RIM / 2])
        bottle = _free_body(spec, mujoco, "bottle", [0.25, 0.0, 0.04])
        r, h = self.BOTTLE
        _geom(bottle, mujoco, "cylinder", [r, h], [0.95, 0.95, 0.95, 1], mass=0.03, **GRASPABLE)
        _geom(bottle, mujoco, "cylinder", [r + 0.001, 0.008], [0.95, 0.5, 0.1, 1], pos=[0, 0, h], mass=0.005,
              **GRASPABLE)

    def layout(self, rng):
        order = rng.permutation(list(TRAY_COLOURS))
        x = rng.uniform(0.37, 0.42)
        y0 = rng.uniform(-0.19, -0.11)
        positions = {f"{colour}_tray": (float(x), float(y0 + 0.13 * i), 0.0) for i, colour in enumerate(order)}
        bottle = np.array([rng.uniform(0.2, 0.26), rng.uniform(-0.15, 0.15)])
        positions["bottle"] = _xyz(bottle, self.BOTTLE[1] + 0.001)
        return positions, str(rng.choice(list(TRAY_COLOURS)))

    def instruction(self, target_colour: str) -> str:
        return f"put the pill bottle into the {target_colour} tray"

    def status(self, model, data, episode):
        rel = data.body("bottle").xpos - data.body(f"{episode.target_colour}_tray").xpos
        inside = bool(np.all(np.abs(rel[:2]) < self.TRAY_INNER) and rel[2] < self.BOTTLE[1] + 0.02)
        return TaskStatus(inside, f"bottle at ({rel[0] * 100:.1f}, {rel[1] * 100:.1f}) cm from the "
                                  f"{episode.target_colour} tray's centre, {rel[2] * 100:.1f} cm up")


TASKS: dict[str, WorkcellTask] = {t.name: t for t in (CleanUp(), TrashCollection(), OpenDrawer(), SortingPills())}


def task_named(name: str) -> WorkcellTask:
    """The task called ``name``; a clear error naming the tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError("task", f"unknown task {name!r}", ", ".join(TASKS)) from None


def compile_task_model(task: WorkcellTask, scene: SceneConfig):
    """The workcell with ``task``'s objects, compiled (``mujoco.MjModel``)."""
    spec = build_spec(scene)
    task.add_objects(spec)
    return spec.compile()
