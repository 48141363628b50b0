"""What the demo reads back of its recording's arm: refusals split into the unsafe ones (the
motion itself refused by the safety checks) and the ones while the arm could take nothing."""
from fedvla.app.recording import ArmMotion
from fedvla.robot.safety import Violation


def test_only_safety_violations_count_as_unsafe_refusals() -> None:
    motion = ArmMotion(0.5, 0.1, {"arm is fault": 3, "arm is disconnected": 1, Violation.WORKSPACE.value: 2,
                                  Violation.VELOCITY.value: 1})
    assert motion.refused_chunks == 7 and motion.unsafe_chunks == 3
    assert motion.refusals() == "1 arm is disconnected, 3 arm is fault, 1 velocity, 2 workspace"
    assert ArmMotion(0.5, 0.1, {"arm is fault": 4}).unsafe_chunks == 0
