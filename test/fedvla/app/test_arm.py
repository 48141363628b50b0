"""A policy drives the arm only if the driver executes its actions as they were meant: the action
space a checkpoint records (from its training data) against the driver's retargeting settings."""
from __future__ import annotations

import json

import pytest

from fedvla.app.arm import checked_action_space
from fedvla.config import ConfigError
from fedvla.robot.retarget import ActionFrame, ActionKind, ActionSpace, RetargetConfig

METAWORLD = ActionSpace(ActionKind.EE_DELTA, ActionFrame.BASE, 4, 0.01, 0.05)


def checkpoint(tmp_path, metadata: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"policy": {}, "metadata": metadata}))
    return str(tmp_path)


def test_a_matching_action_space_is_accepted(tmp_path) -> None:
    path = checkpoint(tmp_path, {"action_space": METAWORLD.to_dict(), "client_id": "robot_a"})
    assert checked_action_space(path, RetargetConfig()) == METAWORLD


@pytest.mark.parametrize(("space", "retarget", "message"), [
    (None, RetargetConfig(), "records no action space"),
    (METAWORLD, RetargetConfig(action_frame="object"),
     "the policy acts with ee_delta in the base frame; the driver is set to ee_delta in the object frame"),
    (METAWORLD, RetargetConfig(action_kind="ee_pose"), "the driver is set to ee_pose"),
    (METAWORLD, RetargetConfig(position_scale_m=0.02), "position unit is 0.01 m; the driver's position_scale_m is 0.02"),
    (ActionSpace(ActionKind.EE_DELTA, ActionFrame.BASE, 2, 0.01, 0.05), RetargetConfig(), "2 action values"),
    (ActionSpace(ActionKind.EE_DELTA, ActionFrame.BASE, 7, 0.01, 0.1), RetargetConfig(), "rotation unit is 0.1 rad"),
])
def test_an_action_space_the_driver_would_misread_is_refused(tmp_path, space, retarget, message) -> None:
    path = checkpoint(tmp_path, {"action_space": space.to_dict()} if space else {})
    with pytest.raises(ConfigError, match="checkpoint_path") as err:
        checked_action_space(path, retarget)
    assert message in str(err.value)


def test_a_missing_or_malformed_checkpoint_is_refused_clearly(tmp_path) -> None:
    with pytest.raises(ConfigError, match="is not a checkpoint: config.json is missing"):
        checked_action_space(str(tmp_path / "nothing"), RetargetConfig())
    path = checkpoint(tmp_path, {"action_space": {"kind": "joint_velocity"}})
    with pytest.raises(ConfigError, match="is malformed"):
        checked_action_space(path, RetargetConfig())
