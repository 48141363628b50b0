"""One builder and one parser per message (fedvla.data.messages): each message built, serialized
to CDR and back with rosbags (what a bag holds), parses to what was built; broken layouts are
refused with the reason. The same builders with rclpy's classes: test_fedvla_ros/test_conversions.py."""
from __future__ import annotations

import numpy as np
import pytest

from fedvla.bag import BagError, TypeRegistry
from fedvla.data.messages import (ACTION_CHUNK_TYPE, EXPERT_ACTIVATION_TYPE, PARSED_SCENE_TYPE, SCENE_OBJECT_TYPE,
                                  action_chunk_fields, expert_activation_fields, parse_action_chunk,
                                  parse_expert_activation, parse_parsed_scene, parsed_scene_fields)
from fedvla.federation.rounds import RoundEvent, RoundEventKind, RoundRecord, parse_round_event, round_event_fields
from fedvla.iosp.parser import CameraParse
from fedvla.iosp.types import Detection, ObjectGroup, SelectedTokens


FEDERATION_ROUND_TYPE = "fedvla_interfaces/msg/FederationRound"


@pytest.fixture(scope="module")
def types():
    registry = TypeRegistry()
    try:
        for msgtype in (ACTION_CHUNK_TYPE, PARSED_SCENE_TYPE, EXPERT_ACTIVATION_TYPE, FEDERATION_ROUND_TYPE):
            registry.ensure(msgtype)
    except BagError as err:
        pytest.skip(f"fedvla_interfaces is not installed: {err}")
    store = registry.typestore
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=3, nanosec=4),
                                                 frame_id="f")

    def through_cdr(msgtype: str, **fields):
        msg = store.types[msgtype](header=header, **fields)
        return store.deserialize_cdr(store.serialize_cdr(msg, msgtype), msgtype)

    through_cdr.types = store.types
    return through_cdr


class _Fields:
    """A message-like object with chosen fields (for layouts no builder makes)."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)


def test_an_action_chunk_round_trips(types) -> None:
    actions = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    back = parse_action_chunk(types(ACTION_CHUNK_TYPE, **action_chunk_fields(actions, 0.05, compute_time_s=0.012)))
    np.testing.assert_array_equal(back.actions, actions)
    assert (back.step_period_s, back.compute_time_s) == (0.05, pytest.approx(0.012))
    assert back.dimension_names == ("action_0", "action_1", "action_2", "action_3")
    named = parse_action_chunk(types(ACTION_CHUNK_TYPE, **action_chunk_fields(actions[:, :2], 0.1,
                                                                              dimension_names=["dx", "dy"])))
    assert named.dimension_names == ("dx", "dy") and named.actions.shape == (3, 2)


def test_a_broken_action_chunk_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="6 values for horizon 2 x 2 dimensions"):
        parse_action_chunk(_Fields(actions=np.zeros(6), horizon=2, dimension_names=["a", "b"], step_period_s=0.1,
                                   compute_time_s=0.0))
    with pytest.raises(ValueError, match="is empty"):
        parse_action_chunk(_Fields(actions=np.zeros(0), horizon=0, dimension_names=[], step_period_s=0.1,
                                   compute_time_s=0.0))
    with pytest.raises(ValueError, match="2 dimension names for 3"):
        action_chunk_fields(np.zeros((2, 3)), 0.1, dimension_names=["a", "b"])


def _parse() -> CameraParse:
    selection = SelectedTokens(indices=np.array([[0, 5], [12, 0], [3, 4]]), valid=np.array([[1, 1], [1, 0], [0, 0]], bool),
                               scores=np.zeros((3, 2), np.float32))
    detections = [Detection("drawer", (0.0, 1.0, 16.0, 17.0), 0.9, track_id=2), Detection("mug", (40, 40, 48, 50), 0.5)]
    return CameraParse(camera="top", instruction="open the drawer", detections=detections,
                       groups=[ObjectGroup.TARGET, ObjectGroup.SURROUNDING], targets=[], selection=selection,
                       grid=(4, 4), timings_ms={}, object_tokens=[np.array([0, 5]), np.array([12])])


def test_a_parsed_scene_round_trips(types) -> None:
    parse = _parse()
    msg = types(PARSED_SCENE_TYPE, **parsed_scene_fields(parse, "box_mask", types.types[SCENE_OBJECT_TYPE]))
    back = parse_parsed_scene(msg)
    assert (back.camera, back.instruction, back.selection_rule, back.grid) == ("top", "open the drawer", "box_mask",
                                                                                (4, 4))
    np.testing.assert_array_equal(back.selection.valid, parse.selection.valid)
    np.testing.assert_array_equal(back.selection.flat_indices(), parse.selection.flat_indices())
    drawer, mug = back.objects
    assert (drawer.name, drawer.group, drawer.score, drawer.track_id) == ("drawer", ObjectGroup.TARGET,
                                                                          pytest.approx(0.9), 2)
    assert drawer.box == (0.0, 1.0, 16.0, 17.0) and drawer.token_indices == (0, 5) and mug.token_indices == (12,)
    assert back.group_summary()[ObjectGroup.TARGET] == (["drawer"], 2)
    assert back.group_summary()[ObjectGroup.BACKGROUND] == ([], 0)


def test_a_broken_parsed_scene_is_refused_with_the_reason(types) -> None:
    fields = parsed_scene_fields(_parse(), "box_mask", types.types[SCENE_OBJECT_TYPE])
    with pytest.raises(ValueError, match="expected 3 x 2 token indices, got 5"):
        parse_parsed_scene(_Fields(**{**fields, "group_token_indices": np.zeros(5, np.int32)}))
    with pytest.raises(ValueError, match="token index 16 is outside the 4 x 4 patch grid"):
        parse_parsed_scene(_Fields(**{**fields, "group_token_indices": np.array([16, -1, -1, -1, -1, -1])}))
    bad_object = _Fields(class_name="x", group=7, score=1.0, track_id=0, x_min=0, y_min=0, x_max=1, y_max=1,
                         selected_token_indices=[])
    with pytest.raises(ValueError, match="group 7"):
        parse_parsed_scene(_Fields(**{**fields, "objects": [bad_object]}))


def test_expert_activation_round_trips(types) -> None:
    counts = np.array([[3, 0, 1], [0, 4, 0]])
    back = parse_expert_activation(types(EXPERT_ACTIVATION_TYPE, **expert_activation_fields(counts, 1.25)))
    np.testing.assert_array_equal(back.counts, counts)
    assert back.experts_per_token == 1.25
    with pytest.raises(ValueError, match="5 expert counts for 2 layers x 3 experts"):
        parse_expert_activation(_Fields(counts=[1] * 5, num_layers=2, num_experts=3, experts_per_token=1.0))


def test_round_events_round_trip(types) -> None:
    record = RoundRecord(round=2, clients=["robot_a", "robot_b"], dropped=["robot_c"], num_samples=[40, 60],
                         layer_weights=[[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]], aggregation="eda",
                         closed_by="timeout", duration_s=12.5)
    closed = RoundEvent(RoundEventKind.CLOSED, 2, 5, False, "eda", record.clients, record)
    assert parse_round_event(types(FEDERATION_ROUND_TYPE, **round_event_fields(closed))) == closed
    status = RoundEvent(RoundEventKind.STATUS, 3, 5, False, "fedavg", ["robot_b"])
    assert parse_round_event(types(FEDERATION_ROUND_TYPE, **round_event_fields(status))) == status
    broken = round_event_fields(closed) | {"num_layers": 2}
    with pytest.raises(ValueError, match="carries 6 weights for 2 layers"):
        parse_round_event(_Fields(**broken))
    with pytest.raises(ValueError, match="'paused' is not a valid RoundEventKind"):
        parse_round_event(_Fields(**(round_event_fields(status) | {"event": "paused"})))
