"""The policy node end to end: a checkpoint, live images and joint states in, action chunks out."""
import time

import numpy as np
import pytest

from support.ros import start_node, stop_process, wait_for_messages

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from fedvla.data.synthetic import SquareReachDataset  # noqa: E402
from fedvla.model.checkpoint import save_checkpoint, seeded_policy  # noqa: E402
from fedvla.model.config import PolicyConfig  # noqa: E402
from fedvla.app.policy_runtime import PolicyRuntime, PolicyRuntimeConfig  # noqa: E402
from fedvla_interfaces.msg import ActionChunk, ExpertActivation, ParsedScene  # noqa: E402
from fedvla_ros.conversions import image_msg  # noqa: E402

pytestmark = pytest.mark.ros
CAMERAS = ("left", "right")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pathlib import Path

    tiny = PolicyConfig.from_yaml(Path(__file__).resolve().parents[2] / "config" / "model" / "tiny.yaml",
                                  camera_names=list(CAMERAS), image_size=32)
    data = SquareReachDataset(tiny, 16)
    policy = seeded_policy(tiny, 4)
    policy.normalizer.fit(data.actions, data.proprio)
    return save_checkpoint(policy, tmp_path_factory.mktemp("policy") / "ckpt"), tiny


def run_policy_node(context, path, images, joints, instruction, scenes=None):
    """Start the node on a checkpoint, feed it inputs at 20 Hz, return its first outputs."""
    process = start_node("fedvla_ros", "policy_node", name="policy",
                         parameters={"checkpoint_path": str(path), "rate_hz": 5.0, "instruction": instruction})
    node = rclpy.create_node("policy_inputs", context=context)
    image_pubs = [node.create_publisher(Image, f"/camera/{c}/color/image_raw", 10) for c in CAMERAS]
    joint_pub = node.create_publisher(JointState, "/joint_states", 10)
    scene_pub = node.create_publisher(ParsedScene, "/scene_parser/parsed_scene", 10)

    published = set()  # the cameras' frame stamps

    def publish_inputs() -> None:
        stamp = node.get_clock().now().to_msg()
        published.add((stamp.sec, stamp.nanosec))
        for pub, img in zip(image_pubs, images):
            pub.publish(image_msg(img, "rgb8", stamp, "cam"))
        joint_pub.publish(JointState(name=[f"j{i}" for i in range(5)], position=joints.tolist()))
        for scene in scenes or []:
            scene.header.stamp = stamp
            scene_pub.publish(scene)

    timer = node.create_timer(0.05, publish_inputs)
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received, experts = [], []
    node.create_subscription(ActionChunk, "/policy/action_chunk", received.append, 10)
    node.create_subscription(ExpertActivation, "/policy/expert_activation", experts.append, 10)
    try:
        deadline = time.monotonic() + 90
        while (not received or not experts) and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.05)
    finally:
        node.destroy_timer(timer)
        executor.shutdown()
        node.destroy_node()
        _, err = stop_process(process)
    assert received, f"no action chunk; node output:\n{err}"
    assert process.returncode == 0, err
    # A chunk is stamped with the frame it answers (the driver's end-to-end latency starts there).
    assert (received[0].header.stamp.sec, received[0].header.stamp.nanosec) in published
    return received[0], experts[0]


def test_policy_node_publishes_the_runtimes_action_chunk(rclpy_context, checkpoint) -> None:
    path, tiny = checkpoint
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in CAMERAS]
    joints = np.array([0.1, -0.2, 0.3, 0.05, 9.0], dtype=np.float64)  # one more joint than proprio_dim
    instruction = "push the square to the corner"
    expected = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(path))).step(images, joints[:4], instruction)
    chunk, activation = run_policy_node(rclpy_context, path, images, joints, instruction)
    assert (chunk.horizon, len(chunk.dimension_names)) == (tiny.horizon, tiny.action_dim)
    np.testing.assert_allclose(np.array(chunk.actions).reshape(tiny.horizon, tiny.action_dim), expected.chunk,
                               rtol=1e-5, atol=1e-6)
    assert (activation.num_layers, activation.num_experts) == (tiny.num_blocks, tiny.num_experts)
    counts = np.array(activation.counts).reshape(tiny.num_blocks, tiny.num_experts)
    np.testing.assert_array_equal(counts, expected.expert_counts)


def test_an_iosp_policy_uses_the_scene_parsers_token_selection(rclpy_context, tmp_path) -> None:
    from pathlib import Path

    from fedvla.iosp.types import SelectedTokens

    tiny = PolicyConfig.from_yaml(Path(__file__).resolve().parents[2] / "config" / "model" / "tiny.yaml",
                                  camera_names=list(CAMERAS), image_size=64, iosp=True, iosp_tokens_per_group=2)
    data = SquareReachDataset(tiny, 8)
    policy = seeded_policy(tiny, 5)
    policy.normalizer.fit(data.actions, data.proprio)
    path = save_checkpoint(policy, tmp_path / "iosp")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in CAMERAS]
    joints = np.array([0.1, -0.2, 0.3, 0.05], dtype=np.float64)
    flat = {"left": [5, 6, -1, -1, 12, 13], "right": [0, -1, 3, -1, -1, -1]}
    selections = [SelectedTokens.from_flat(flat[c], 2) for c in CAMERAS]
    runtime = PolicyRuntime(PolicyRuntimeConfig(checkpoint_path=str(path)))
    expected = runtime.step(images, joints, "reach", selections)
    with pytest.raises(ValueError, match="this policy uses IOSP"):
        runtime.step(images, joints, "reach")
    scenes = [ParsedScene(camera_name=c, patch_rows=4, patch_cols=4, tokens_per_group=2, token_selection_rule="box_mask",
                          group_token_indices=flat[c]) for c in CAMERAS]
    chunk, _ = run_policy_node(rclpy_context, path, images, joints, "reach", scenes)
    np.testing.assert_allclose(np.array(chunk.actions).reshape(tiny.horizon, tiny.action_dim), expected.chunk,
                               rtol=1e-5, atol=1e-6)


def test_a_checkpoint_for_another_robot_is_refused_in_one_line(checkpoint) -> None:
    path, _ = checkpoint
    process = start_node("fedvla_ros", "policy_node", name="policy_bad",
                         parameters={"checkpoint_path": str(path), "expected_action_dim": 7})
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert lines[-1].startswith("policy_node: error: ") and "predicts 4 action dimensions, this robot needs 7" in lines[-1]


def test_missing_checkpoint_is_a_parameter_error() -> None:
    process = start_node("fedvla_ros", "policy_node", name="policy_none", parameters={"checkpoint_path": "/no/ckpt"})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip().splitlines()[-1] == ("policy_node: error: checkpoint_path: '/no/ckpt' is not a directory "
                                            "(allowed: a checkpoint directory with config.json)")
