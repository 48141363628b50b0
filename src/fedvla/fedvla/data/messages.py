"""The layouts of the stack's own messages (``fedvla_interfaces``): one builder and one parser per
message, for the rclpy nodes and the rosbags reader and writer alike.

Builders return the message's fields as keyword arguments, so the caller's message class makes the
object: ``ActionChunk(header=header, **action_chunk_fields(...))`` in a node,
``typestore.types[...](header=..., **action_chunk_fields(...))`` in a bag. Primitive sequences are
numpy arrays, which both accept. Parsers read any object with the message's fields (rclpy's or
rosbags') and raise ValueError, naming the problem, on a message that breaks its layout.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedvla.iosp.parser import CameraParse
from fedvla.iosp.types import NUM_GROUPS, ObjectGroup, SelectedTokens

ACTION_CHUNK_TYPE = "fedvla_interfaces/msg/ActionChunk"
PARSED_SCENE_TYPE = "fedvla_interfaces/msg/ParsedScene"
SCENE_OBJECT_TYPE = "fedvla_interfaces/msg/SceneObject"
EXPERT_ACTIVATION_TYPE = "fedvla_interfaces/msg/ExpertActivation"


def default_dimension_names(action_dim: int) -> list[str]:
    """Names of action dimensions that have no physical meaning the policy knows of."""
    return [f"action_{i}" for i in range(action_dim)]


# --- ActionChunk -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ActionChunkContent:
    actions: np.ndarray  # (horizon, A) float32, step-major
    step_period_s: float  # time between two steps of the chunk
    compute_time_s: float = 0.0  # the policy's time for this chunk (0: not measured)
    dimension_names: tuple[str, ...] = ()


def action_chunk_fields(actions: np.ndarray, step_period_s: float, *, compute_time_s: float = 0.0,
                        dimension_names: Sequence[str] | None = None) -> dict[str, Any]:
    """ActionChunk fields (all but the header) of ``actions`` (horizon, A); dimensions are named
    ``action_<i>`` unless named here."""
    chunk = np.atleast_2d(np.asarray(actions, dtype=np.float32))
    names = list(dimension_names) if dimension_names is not None else default_dimension_names(chunk.shape[1])
    if len(names) != chunk.shape[1]:
        raise ValueError(f"{len(names)} dimension names for {chunk.shape[1]} action dimensions")
    return {"dimension_names": names, "horizon": int(chunk.shape[0]), "actions": np.ascontiguousarray(chunk).reshape(-1),
            "step_period_s": float(step_period_s), "compute_time_s": float(compute_time_s)}


def parse_action_chunk(msg: Any) -> ActionChunkContent:
    values = np.asarray(msg.actions, dtype=np.float32)
    names = tuple(msg.dimension_names)
    if msg.horizon < 1 or values.size == 0:
        raise ValueError(f"an action chunk of horizon {msg.horizon} with {values.size} values is empty")
    if names and values.size != msg.horizon * len(names):
        raise ValueError(f"{values.size} values for horizon {msg.horizon} x {len(names)} dimensions")
    if values.size % msg.horizon:
        raise ValueError(f"an action chunk of horizon {msg.horizon} cannot hold {values.size} values")
    return ActionChunkContent(values.reshape(msg.horizon, -1), float(msg.step_period_s), float(msg.compute_time_s),
                              names)


# --- ParsedScene -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SceneObjectContent:
    name: str
    group: ObjectGroup
    score: float
    track_id: int
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels
    token_indices: tuple[int, ...]  # the group's selected tokens that lie on this object


@dataclasses.dataclass(frozen=True)
class ParsedSceneContent:
    camera: str
    instruction: str
    target_names: tuple[str, ...]
    objects: tuple[SceneObjectContent, ...]
    selection_rule: str
    grid: tuple[int, int]  # patch rows, patch columns
    selection: SelectedTokens  # scores are not in the message (zero here)

    def group_summary(self) -> dict[ObjectGroup, tuple[list[str], int]]:
        """Per group: its distinct object names and how many tokens were selected for it."""
        return {group: (sorted({o.name for o in self.objects if o.group is group}),
                        int(self.selection.valid[group].sum())) for group in ObjectGroup}


def parsed_scene_fields(parse: CameraParse, selection_rule: str, scene_object: Callable[..., Any]) -> dict[str, Any]:
    """ParsedScene fields (all but the header) of a scene parse; ``scene_object`` makes the
    SceneObject messages (the caller's message class)."""
    objects = []
    for detection, group, tokens in zip(parse.detections, parse.groups, parse.object_tokens, strict=True):
        x0, y0, x1, y1 = detection.box
        objects.append(scene_object(class_name=detection.name, group=int(group), score=float(detection.score),
                                    track_id=int(detection.track_id), x_min=float(x0), y_min=float(y0),
                                    x_max=float(x1), y_max=float(y1),
                                    selected_token_indices=np.asarray(tokens, dtype=np.uint16)))
    rows, cols = parse.grid
    return {"camera_name": parse.camera, "instruction": parse.instruction,
            "target_names": [t.name for t in parse.targets], "objects": objects,
            "token_selection_rule": selection_rule, "patch_rows": int(rows), "patch_cols": int(cols),
            "tokens_per_group": int(parse.selection.indices.shape[1]),
            "group_token_indices": parse.selection.flat_indices()}


def parse_parsed_scene(msg: Any) -> ParsedSceneContent:
    selection = SelectedTokens.from_flat(msg.group_token_indices, int(msg.tokens_per_group))
    patches = int(msg.patch_rows) * int(msg.patch_cols)
    if selection.valid.any() and selection.indices[selection.valid].max() >= patches:
        raise ValueError(f"token index {int(selection.indices[selection.valid].max())} is outside the "
                         f"{msg.patch_rows} x {msg.patch_cols} patch grid")
    objects = []
    for o in msg.objects:
        if o.group >= NUM_GROUPS:
            raise ValueError(f"object {o.class_name!r} has group {o.group}; groups are 0 ... {NUM_GROUPS - 1}")
        objects.append(SceneObjectContent(o.class_name, ObjectGroup(o.group), float(o.score), int(o.track_id),
                                          (float(o.x_min), float(o.y_min), float(o.x_max), float(o.y_max)),
                                          tuple(int(i) for i in o.selected_token_indices)))
    return ParsedSceneContent(msg.camera_name, msg.instruction, tuple(msg.target_names), tuple(objects),
                              msg.token_selection_rule, (int(msg.patch_rows), int(msg.patch_cols)), selection)


# --- ExpertActivation --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExpertActivationContent:
    counts: np.ndarray  # (layers, experts) uint32: tokens routed to each expert in one policy step
    experts_per_token: float
    skills: tuple[str, ...] = ()  # the skills the router chose (skill federation), best first
    skill_weights: tuple[float, ...] = ()


def expert_activation_fields(counts: np.ndarray, experts_per_token: float,
                             skills: Sequence[str] = (), skill_weights: Sequence[float] = ()) -> dict[str, Any]:
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"expert counts are (layers, experts), got shape {counts.shape}")
    if len(skills) != len(skill_weights):
        raise ValueError(f"{len(skills)} skills with {len(skill_weights)} weights")
    return {"num_layers": int(counts.shape[0]), "num_experts": int(counts.shape[1]),
            "counts": np.ascontiguousarray(counts, dtype=np.uint32).reshape(-1),
            "experts_per_token": float(experts_per_token), "skills": list(skills),
            "skill_weights": np.asarray(skill_weights, dtype=np.float32)}


def parse_expert_activation(msg: Any) -> ExpertActivationContent:
    counts = np.asarray(msg.counts, dtype=np.uint32)
    if counts.size != msg.num_layers * msg.num_experts:
        raise ValueError(f"{counts.size} expert counts for {msg.num_layers} layers x {msg.num_experts} experts")
    # (recordings made before the skill fields existed have none)
    skills, weights = tuple(getattr(msg, "skills", ())), tuple(float(w) for w in getattr(msg, "skill_weights", ()))
    if len(skills) != len(weights):
        raise ValueError(f"{len(skills)} skills with {len(weights)} weights")
    return ExpertActivationContent(counts.reshape(msg.num_layers, msg.num_experts), float(msg.experts_per_token),
                                   skills, weights)
