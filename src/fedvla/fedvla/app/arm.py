"""Which policy may drive the arm: the action space a checkpoint was trained in, checked against
the driver's retargeting settings before anything moves (torch-free: the driver never loads the
policy itself)."""
from __future__ import annotations

from fedvla.config import ConfigError
from fedvla.model.checkpoint_meta import read_checkpoint_description
from fedvla.robot.retarget import ActionSpace, RetargetConfig, execution_problem


def checked_action_space(checkpoint_path: str, retarget: RetargetConfig) -> ActionSpace:
    """The checkpoint's action space, if the driver executes it as meant; ConfigError otherwise."""
    try:
        description = read_checkpoint_description(checkpoint_path)
        recorded = (description.get("metadata") or {}).get("action_space")
        if recorded is None:
            raise ValueError(f"{checkpoint_path} records no action space: it was trained on data whose actions "
                             "have no known meaning for an arm (synthetic, or a dataset without action_space)")
        space = ActionSpace.from_dict(recorded, checkpoint_path)
    except ValueError as err:
        raise ConfigError("checkpoint_path", str(err), "a checkpoint trained on robot or simulator episodes") from None
    problem = execution_problem(space, retarget)
    if problem is not None:
        raise ConfigError("checkpoint_path", f"this driver cannot execute the policy of {checkpoint_path}: {problem}",
                          f"driver settings for {space.describe()}, or another checkpoint")
    return space
