"""Oracle object detection in simulated Meta-World scenes, from MuJoCo's segmentation render.

:class:`SimSegmentationDetector` renders one segmentation image (which geom or site is drawn at
each pixel), maps each of those elements to a named scene object and returns one
:class:`~fedvla.iosp.types.Detection` per object with at least ``min_pixels`` visible pixels:
the mask, its extent as the box, score 1.0, and the object's index as ``track_id`` (the
simulator knows identities, so ids are stable across frames and cameras without a tracker).
All elements of one object (geoms, sites, child bodies) form one detection.

Naming rules
------------
An element is named by the first :class:`NamingRule` whose ``fnmatch`` pattern matches, trying
the element's own name, then its body's name, then each ancestor body's, nearest first. Unnamed
bodies are skipped, so unnamed geoms and bodies take the name of their nearest named ancestor.
At each name the task's rules come before the common ones. A rule without an object name drops
the element: its pixels belong to no detection.

Common to every task (the Sawyer robot and Meta-World's arena), as object (foreground?) ← element:

* floor (no) ← geom ``floor``
* table (no) ← body ``tablelink``
* wall (no) ← body ``RetainingWall``, the low rim around the table top
* robot base (no) ← body ``base``: pedestal, controller box, torso, the arm's mount
* robot arm (yes) ← bodies ``right_l0`` … ``right_l6``, with the head that rides on ``right_l0``
* gripper (yes) ← body ``right_hand``: gripper base, fingers, fingertip sites
* goal marker (no) ← sites ``goal*``: Meta-World draws goals as coloured dots
* dropped ← body ``mocap``, the hand's invisible weld target

Per task (:data:`TASK_NAMING`; the moving part an instruction acts on gets the plain name, the
fixture it belongs to a compound one):

* ``door-lock-v3``: ``lock_link`` → "door lock" (the lever that turns); ``door_link`` → "door"
  (panel, handle, lock mount; it has no joint in this task); ``doorlockA`` → "safe" (the cabinet,
  its mesh is named ``safe``).
* ``drawer-close-v3``: ``drawer_link`` → "drawer" (with its handle); ``drawercase_link`` →
  "drawer case".
* ``sweep-into-v3``: ``obj`` → "puck" (a 4 cm wooden cube that the task calls a puck); the hole —
  see below — and the ``goal`` site inside it → "hole" (foreground no: it is part of the table).
* ``window-open-v3``: ``windowb_a`` → "window" (the sash that slides, with its handle and handle
  sites); ``windowb_b`` and the unnamed frame body under ``window`` → "window frame" (the second
  sash has no joint: functionally it is part of the frame).

Elements no rule names (other tasks): the nearest named ancestor body below the world, with
"_link" dropped and "_" read as a space, foreground; an element attached to the world body itself
cannot move, so it is named by its own name, background (dropped when it has none).

The hole (:class:`Opening`)
---------------------------
Sweep-into's hole is no body: it is a gap between four table-top boxes of ``tablelink`` through
which a lower table plate shows. Naming the plate "hole" would be wrong (its edge also shows along
the table's side from the corner cameras), so the hole is defined by its opening: the pixels
labelled "table" inside the image of the opening's rectangle are the hole (the plate below and the
gap's inner walls); whatever is in front of the opening (the puck, the gripper) keeps its name.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedvla.iosp.types import Detection, ObjectLabel, detections_from_labels
from fedvla.sim.metaworld_scene import CameraModel, SceneError, SceneRenderer, meta_world_task_names


@dataclasses.dataclass(frozen=True)
class NamingRule:
    pattern: str  # fnmatch pattern on a geom, site or body name (case-sensitive)
    name: str | None  # the object's name; None drops the element
    foreground: bool = True


@dataclasses.dataclass(frozen=True)
class Opening:
    """A hole in a static object: pixels of the objects ``through`` inside the image of the convex
    planar polygon ``corners`` (world coordinates, in order around it) become the object ``name``."""

    name: str
    corners: tuple[tuple[float, float, float], ...]
    through: tuple[str, ...]
    foreground: bool = False


@dataclasses.dataclass(frozen=True)
class SceneNaming:
    rules: tuple[NamingRule, ...]
    openings: tuple[Opening, ...] = ()


COMMON_RULES = (
    NamingRule("floor", "floor", foreground=False),
    NamingRule("tablelink", "table", foreground=False),
    NamingRule("RetainingWall", "wall", foreground=False),
    NamingRule("right_hand", "gripper"),
    NamingRule("right_l[0-6]", "robot arm"),
    NamingRule("base", "robot base", foreground=False),
    NamingRule("goal*", "goal marker", foreground=False),
    NamingRule("mocap", None),
)

# The top of the gap in sweep-into's table (Meta-World's scene/basic_scene_b.xml: table-top boxes
# at z ∈ [-0.05, 0.05] around tablelink at (0, 0.6, 0) leave x ∈ [-0.08, 0.08], y ∈ [0.76, 0.92]).
SWEEP_INTO_HOLE = Opening(
    name="hole",
    corners=((-0.08, 0.76, 0.05), (0.08, 0.76, 0.05), (0.08, 0.92, 0.05), (-0.08, 0.92, 0.05)),
    through=("table",),
)

TASK_NAMING: dict[str, SceneNaming] = {
    "door-lock-v3": SceneNaming((
        NamingRule("lock_link", "door lock"),
        NamingRule("door_link", "door"),
        NamingRule("doorlockA", "safe"),
    )),
    "drawer-close-v3": SceneNaming((
        NamingRule("drawer_link", "drawer"),
        NamingRule("drawercase_link", "drawer case"),
    )),
    "sweep-into-v3": SceneNaming((
        NamingRule("obj", "puck"),
        NamingRule("goal", "hole", foreground=False),
    ), openings=(SWEEP_INTO_HOLE,)),
    "window-open-v3": SceneNaming((
        NamingRule("windowb_a", "window"),
        NamingRule("windowb_b", "window frame"),
        NamingRule("window", "window frame"),
    )),
}


def scene_naming(task: str | None) -> SceneNaming:
    """The task's rules before the common ones; the common ones alone for other tasks."""
    own = TASK_NAMING.get(task or "", SceneNaming(()))
    return SceneNaming(own.rules + COMMON_RULES, own.openings)


@dataclasses.dataclass(frozen=True)
class SceneObject(ObjectLabel):
    """One named object of the scene: the MuJoCo geoms and sites drawn as part of it."""

    geom_ids: tuple[int, ...]
    site_ids: tuple[int, ...]


def readable(mujoco_name: str) -> str:
    name = mujoco_name[:-len("_link")] if mujoco_name.endswith("_link") else mujoco_name
    return name.replace("_", " ").strip()


def name_element(own_name: str | None, ancestor_body_names: Sequence[str | None],
                 rules: Sequence[NamingRule]) -> tuple[str | None, bool]:
    """(object name, foreground) of one geom or site; ``ancestor_body_names``: its body first,
    up to but without the world body (empty for an element attached to the world)."""
    for candidate in (own_name, *ancestor_body_names):
        if not candidate:
            continue
        for rule in rules:
            if fnmatch.fnmatchcase(candidate, rule.pattern):
                return rule.name, rule.foreground
    named_bodies = [n for n in ancestor_body_names if n]
    if named_bodies:
        return readable(named_bodies[0]), True
    return (readable(own_name), False) if own_name else (None, False)


def scene_objects(model: Any, naming: SceneNaming) -> tuple[list[SceneObject], np.ndarray]:
    """The model's named objects, and the object index of every element: entries [0, ngeom) are
    geoms, [ngeom, ngeom + nsite) sites, the last one (-1) everything else; -1 where dropped."""
    import mujoco

    def body_chain(body_id: int) -> list[str | None]:
        chain = []
        while body_id != 0:
            chain.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, body_id))
            body_id = int(model.body_parentid[body_id])
        return chain

    chains = [body_chain(b) for b in range(model.nbody)]
    elements = [(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, g), int(model.geom_bodyid[g]), "geom", g)
                for g in range(model.ngeom)]
    elements += [(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SITE, s), int(model.site_bodyid[s]), "site", s)
                 for s in range(model.nsite)]
    # Openings are objects too, though no element carries their name until the image is labelled.
    extra = [(opening.name, opening.foreground) for opening in naming.openings]

    index_of: dict[str, int] = {}
    foreground_of: list[bool] = []
    members: list[tuple[list[int], list[int]]] = []

    def object_index(name: str, foreground: bool) -> int:
        if name not in index_of:
            index_of[name] = len(foreground_of)
            foreground_of.append(foreground)
            members.append(([], []))
        elif foreground_of[index_of[name]] != foreground:
            raise SceneError(f"the naming rules make {name!r} both foreground and background")
        return index_of[name]

    element_object = np.full(model.ngeom + model.nsite + 1, -1, dtype=np.int64)
    for slot, (own_name, body_id, kind, element_id) in enumerate(elements):
        name, foreground = name_element(own_name, chains[body_id], naming.rules)
        if name is None:
            continue
        index = object_index(name, foreground)
        element_object[slot] = index
        members[index][0 if kind == "geom" else 1].append(element_id)
    for name, foreground in extra:
        object_index(name, foreground)
    objects = [SceneObject(name, foreground_of[i], tuple(members[i][0]), tuple(members[i][1]))
               for name, i in index_of.items()]
    return objects, element_object


def metaworld_task_of(env: Any) -> str | None:
    """The Meta-World v3 task name of an env (its class), or None for anything else."""
    import metaworld

    env_class = type(getattr(env, "unwrapped", env))
    return next((name for name, cls in metaworld.ALL_V3_ENVIRONMENTS.items() if cls is env_class), None)


class SimSegmentationDetector:
    """Named, masked detections of every visible object of a MuJoCo scene (see the module doc)."""

    def __init__(self, model: Any, renderer: SceneRenderer, *, task: str | None = None, min_pixels: int = 4,
                 owns_renderer: bool = False) -> None:
        import mujoco

        if min_pixels < 1:
            raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
        if task is not None and task not in TASK_NAMING and task not in meta_world_task_names():
            raise SceneError(f"unknown Meta-World task {task!r}")
        self._mujoco = mujoco
        # Plain ints: comparing an array with mujoco's enum objects goes element by element in Python.
        self._geom_type, self._site_type = int(mujoco.mjtObj.mjOBJ_GEOM), int(mujoco.mjtObj.mjOBJ_SITE)
        self.model, self.renderer, self.task, self.min_pixels = model, renderer, task, min_pixels
        self._owns_renderer = owns_renderer
        naming = scene_naming(task)
        objects, self._element_object = scene_objects(model, naming)
        self.objects: tuple[SceneObject, ...] = tuple(objects)
        names = [o.name for o in self.objects]
        self._openings = [(names.index(o.name), np.asarray(o.corners, dtype=np.float64),
                           np.array([names.index(t) for t in o.through if t in names], dtype=np.int64))
                          for o in naming.openings]
        self._pixel_rows, self._pixel_cols = np.mgrid[0:renderer.height, 0:renderer.width].astype(np.float64)

    @classmethod
    def for_env(cls, env: Any, width: int = 128, height: int = 128, *, task: str | None = None,
                min_pixels: int = 4) -> SimSegmentationDetector:
        """A detector with its own renderer for a Meta-World env (the task is read from the env's
        class unless given); :meth:`close` frees the renderer."""
        model, data = env.unwrapped.model, env.unwrapped.data
        renderer = SceneRenderer(model, data, width, height)
        return cls(model, renderer, task=task or metaworld_task_of(env), min_pixels=min_pixels, owns_renderer=True)

    def camera(self, name: str) -> CameraModel:
        return self.renderer.camera(name)

    def object_named(self, name: str) -> SceneObject:
        for scene_object in self.objects:
            if scene_object.name == name:
                return scene_object
        raise KeyError(f"no object {name!r} in the scene (objects: {', '.join(o.name for o in self.objects)})")

    def detect(self, camera: CameraModel) -> list[Detection]:
        """The objects visible now from ``camera`` (one segmentation render), in object order."""
        return self.detections_from_labels(self.label_image(self.renderer.render(camera, segmentation=True), camera))

    def label_image(self, segmentation: np.ndarray, camera: CameraModel) -> np.ndarray:
        """(H, W) int64 object index per pixel (into :attr:`objects`), -1 for none, from a
        segmentation render of ``camera``."""
        ids, types = segmentation[..., 0], segmentation[..., 1]
        ngeom, nsite = self.model.ngeom, self.model.nsite
        slots = np.where(types == self._geom_type, ids, np.where(types == self._site_type, ngeom + ids, ngeom + nsite))
        labels = self._element_object[slots]
        for index, corners, through in self._openings:
            inside = self._polygon_pixels(corners, camera)
            if inside is not None:
                labels[inside & np.isin(labels, through)] = index
        return labels

    def detections_from_labels(self, labels: np.ndarray) -> list[Detection]:
        return detections_from_labels(labels, self.objects, self.min_pixels)

    def project(self, points_world: np.ndarray, camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) pixel coordinates (column, row; pixel centres at integers) of world points in the
        image :meth:`detect` labels (upside-down cameras turned), and (N,) depth in front of the camera."""
        mujoco = self._mujoco
        cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera.name)
        data = self.renderer.data
        # MuJoCo cameras look along their -z axis with +y up; cam_xmat's columns are those axes.
        rotation = data.cam_xmat[cam_id].reshape(3, 3)
        local = (np.asarray(points_world, dtype=np.float64) - data.cam_xpos[cam_id]) @ rotation
        depth = -local[:, 2]
        height, width = self.renderer.height, self.renderer.width
        focal = camera.focal_px(height)
        with np.errstate(divide="ignore", invalid="ignore"):
            cols = (width - 1) / 2 + focal * local[:, 0] / depth
            rows = (height - 1) / 2 - focal * local[:, 1] / depth
        if camera.upside_down:
            cols, rows = width - 1 - cols, height - 1 - rows
        return np.stack([cols, rows], axis=1), depth

    def _polygon_pixels(self, corners_world: np.ndarray, camera: CameraModel) -> np.ndarray | None:
        """Pixels whose centre lies inside the image of a convex polygon; None when a corner is
        behind the camera (the image is unbounded): the opening's pixels then keep their names.
        Only cameras riding on the gripper can get that close."""
        pixels, depth = self.project(corners_world, camera)
        if np.any(depth <= 1e-6):
            return None
        sides = []
        for (col0, row0), (col1, row1) in zip(pixels, np.roll(pixels, -1, axis=0)):
            sides.append((col1 - col0) * (self._pixel_rows - row0) - (row1 - row0) * (self._pixel_cols - col0))
        sides = np.stack(sides)
        return np.all(sides >= 0, axis=0) | np.all(sides <= 0, axis=0)

    def close(self) -> None:
        if self._owns_renderer:
            self.renderer.close()

    def __enter__(self) -> SimSegmentationDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
