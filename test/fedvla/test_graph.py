"""config/graph.yaml: the one node-graph description behind launch files and `fedvla launch`."""
from pathlib import Path

import pytest
import yaml

from fedvla.bag import PlayerConfig, RecorderConfig
from fedvla.camera import CameraConfig
from fedvla.config import config_fields, from_mapping
from fedvla.app.federation import FederationClientSettings, FederationServerSettings
from fedvla.graph import Graph, GraphError, template_parts
from fedvla.iosp.runtime import SceneParserRuntimeConfig
from fedvla.app.policy_runtime import PolicyRuntimeConfig
from fedvla.replay import ReplayEvaluatorConfig
from fedvla.robot.pattern import MotionPatternConfig
from fedvla.robot.runtime import DRIVER_CONFIG_CLASSES, driver_configs
from fedvla.twin.scene import SceneConfig
from fedvla.twin.workcell import WorkcellConfig

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
PROFILES = ["real_robot", "sim", "replay", "camera_replay", "federation", "twin"]
# Node parameters beyond the core config's fields (one-to-one otherwise).
NODE_PARAMETERS = {
    "camera_node": set(config_fields(CameraConfig)) | {"optical_frame_id"},
    "bag_recorder": set(config_fields(RecorderConfig)),
    "fed_server": set(config_fields(FederationServerSettings)),
    "fed_client": set(config_fields(FederationClientSettings)) | {"exit_when_finished", "service_timeout_s"},
    "scene_parser": set(config_fields(SceneParserRuntimeConfig)),
    "ur3_driver": {name for cls in DRIVER_CONFIG_CLASSES for name in config_fields(cls)},
    "motion_pattern": set(config_fields(MotionPatternConfig)),
    "bag_player": set(config_fields(PlayerConfig)),
    "policy_node": set(config_fields(PolicyRuntimeConfig)) | {"use_sim_time"},
    "replay_evaluator": set(config_fields(ReplayEvaluatorConfig)) | {"use_sim_time"},
    "workcell_sim": set(config_fields(WorkcellConfig)) | set(config_fields(SceneConfig))
    | {"fps", "status_rate_hz", "optical_frame_id"},
}


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.load(CONFIG)


def test_every_profile_has_a_launch_file_that_uses_it(graph) -> None:
    assert sorted(graph.profile_names) == sorted(PROFILES)
    for name in graph.profile_names:
        text = (REPO / "launch" / f"{name}.launch.py").read_text()
        assert f'profile_launch_description("{name}")' in text


def test_ur_driver_argument_conventions(graph) -> None:
    args = {a.name: a for a in graph.profile("real_robot").arguments}
    assert {"robot_ip", "ur_type", "use_mock_hardware", "launch_rviz"} <= set(args)
    assert args["use_mock_hardware"].default == "false" and args["launch_rviz"].default == "true"
    sim = {a.name: a for a in graph.profile("sim").arguments}
    assert "use_mock_hardware" not in sim and sim["launch_rviz"].default == "false"  # sim is all simulated


def test_a_profile_declares_only_the_arguments_its_nodes_read(graph) -> None:
    for name in graph.profile_names:
        profile = graph.profile(name)
        read = {a for node in profile.nodes for _, binding in node.argument_parameters
                for is_arg, a in template_parts(binding) if is_arg}
        read |= {a for node in profile.nodes for a in (node.if_argument, node.unless_argument) if a}
        assert {a.name for a in profile.arguments} == read, name


def _parameters_for(node, graph) -> dict:
    """Parameters a node receives from its files, honouring /** and its own name, as rcl does."""
    merged: dict = {}
    for path in node.parameter_files:
        doc = yaml.safe_load(path.read_text())
        for key in ("/**", node.spec.fully_qualified_name):
            merged.update((doc.get(key) or {}).get("ros__parameters", {}))
    return merged


@pytest.mark.parametrize("profile", PROFILES)
def test_parameter_files_match_the_core_configs(graph, profile, tmp_path) -> None:
    overrides = {}
    if profile == "camera_replay":  # a RealSense recording file
        overrides["bag"] = str(tmp_path / "recording.db3")
        (tmp_path / "recording.db3").write_bytes(b"")
    elif profile == "replay":  # a rosbag2 directory and a checkpoint
        overrides |= {"bag": str(tmp_path), "checkpoint": str(tmp_path)}
    elif profile == "real_robot":
        overrides |= {"parse_scene": "true", "detector_weights": "yolov8n.yaml"}
    for node in graph.resolve(profile, overrides):
        if node.spec.package != "fedvla_ros":
            continue
        params = _parameters_for(node, graph) | node.parameter_values
        assert params, f"{node.spec.fully_qualified_name} gets no parameters from {node.parameter_files}"
        unknown = set(params) - NODE_PARAMETERS[node.spec.executable]
        assert not unknown, f"{node.spec.fully_qualified_name}: {unknown} are not parameters of the node"
        # Every file's values pass the core's validation.
        if node.spec.executable == "camera_node":
            CameraConfig(**{k: v for k, v in params.items() if k in config_fields(CameraConfig)})
        elif node.spec.executable == "fed_server":
            FederationServerSettings(**params)
        elif node.spec.executable == "fed_client":
            FederationClientSettings(**{k: v for k, v in params.items() if k in config_fields(FederationClientSettings)})
        elif node.spec.executable == "scene_parser":
            SceneParserRuntimeConfig(**params)
        elif node.spec.executable == "ur3_driver":
            driver_configs(params)
        elif node.spec.executable == "motion_pattern":
            from_mapping(MotionPatternConfig, params)
        elif node.spec.executable == "bag_player":
            from_mapping(PlayerConfig, params)
        elif node.spec.executable == "policy_node":
            from_mapping(PolicyRuntimeConfig, {k: v for k, v in params.items() if k != "use_sim_time"})
        elif node.spec.executable == "replay_evaluator":
            from_mapping(ReplayEvaluatorConfig, {k: v for k, v in params.items() if k != "use_sim_time"})
        elif node.spec.executable == "workcell_sim":
            from_mapping(WorkcellConfig, {k: v for k, v in params.items() if k in config_fields(WorkcellConfig)})
            from_mapping(SceneConfig, {k: v for k, v in params.items() if k in config_fields(SceneConfig)})


def test_the_twin_runs_real_robot_against_workcell_sim(graph) -> None:
    """The twin profile is real_robot plus the twin: same driver, on loopback; the twin is the camera."""
    from fedvla.twin.tasks import TASKS

    twin = {n.spec.key for n in graph.resolve("twin")}
    real = {n.spec.key for n in graph.resolve("real_robot", {"launch_camera": "false", "launch_rviz": "false"})}
    assert twin == real | {"workcell_sim"}
    assert "camera_realsense" not in twin and "camera_realsense" in {n.spec.key for n in graph.resolve("real_robot")}
    driver = next(n for n in graph.resolve("twin") if n.spec.key == "ur3_driver")
    assert driver.parameter_values["robot_ip"] == "127.0.0.1"
    task = next(a for a in graph.profile("twin").arguments if a.name == "task")
    assert tuple(task.choices) == tuple(TASKS)  # one list of tasks


def test_the_twin_arms_a_slower_rtde_watchdog_than_the_robot(graph) -> None:
    """rtde_watchdog_hz: 10 Hz (100 ms, ur_rtde's) on the robot; 2 Hz on the twin, whose controller
    shares the machine with the physics, the rendering and the policy; either one on request."""
    def watchdog(profile: str, overrides: dict | None = None) -> float:
        (driver,) = [n for n in graph.resolve(profile, overrides) if n.spec.key == "ur3_driver"]
        return float(driver.parameters()["watchdog_frequency_hz"])

    assert watchdog("real_robot") == 10.0 and watchdog("twin") == 2.0
    assert watchdog("twin", {"rtde_watchdog_hz": "10"}) == 10.0


def test_a_nodes_parameters_merge_its_files_then_the_launch_arguments(graph) -> None:
    """ResolvedNode.parameters(): what ROS-free code (the in-process twin's scene parser) reads to
    run a node's core exactly as the graph starts it."""
    (parser,) = [n for n in graph.resolve("twin", {"parse_scene": "true", "detector_weights": "/w.pt",
                                                   "instruction": "open the drawer"})
                 if n.spec.executable == "scene_parser"]
    values = parser.parameters()
    assert values["detector"] == "yolo" and values["cameras"] == ["camera"]  # config/scene_parser.yaml
    assert values["detector_weights"] == "/w.pt" and values["instruction"] == "open the drawer"  # the arguments


def test_driver_parameter_names_are_unique() -> None:
    names = [name for cls in DRIVER_CONFIG_CLASSES for name in config_fields(cls)]
    assert len(names) == len(set(names))


def test_the_scene_parser_parses_every_camera_on_the_policys_patch_grid(graph) -> None:
    from fedvla.model.config import PolicyConfig

    for profile, overrides in (("sim", {}), ("real_robot", {"parse_scene": "true", "detector_weights": "yolov8n.yaml"}),
                               ("real_robot", {"parse_scene": "true", "use_mock_hardware": "true"})):
        nodes = graph.resolve(profile, overrides)
        cameras = {n.spec.name for n in nodes if n.spec.executable == "camera_node"}
        (parser,) = [n for n in nodes if n.spec.executable == "scene_parser"]
        params = _parameters_for(parser, graph) | parser.parameter_values
        assert set(params["cameras"]) == cameras, profile
    sim = _parameters_for(next(n for n in graph.resolve("sim") if n.spec.executable == "scene_parser"), graph)
    policy = PolicyConfig.from_yaml(CONFIG / "model" / "hpt_small.yaml", proprio_dim=4, action_dim=4)
    assert set(sim["cameras"]) == set(policy.camera_names)
    assert (sim["patch_rows"], sim["patch_cols"]) == policy.patch_grid
    assert sim["tokens_per_group"] == policy.iosp_tokens_per_group
    # The sim scene's task (camera_sim.yaml) gets the study's instruction for it.
    from fedvla.sim.collect import TASK_INSTRUCTIONS

    task = yaml.safe_load((CONFIG / "camera_sim.yaml").read_text())["/**"]["ros__parameters"]["sim_task"]
    assert {a.name: a for a in graph.profile("sim").arguments}["instruction"].default == TASK_INSTRUCTIONS[task]


def test_sim_profile_has_three_distinct_cameras(graph) -> None:
    nodes = [n for n in graph.resolve("sim") if n.spec.executable == "camera_node"]
    cameras = {n.spec.fully_qualified_name: _parameters_for(n, graph)["sim_camera"] for n in nodes}
    assert cameras == {"/camera/corner": "corner", "/camera/top": "topview", "/camera/shoulder": "corner2"}


def test_mock_hardware_swaps_the_realsense_for_a_simulated_camera(graph) -> None:
    real = [n for n in graph.resolve("real_robot", {"launch_rviz": "false"})]
    mock = [n for n in graph.resolve("real_robot", {"launch_rviz": "false", "use_mock_hardware": "true"})]
    assert [n.spec.key for n in real] == ["camera_realsense", "ur3_driver"]
    assert [n.spec.key for n in mock] == ["camera_realsense_mock", "ur3_driver_mock"]
    assert _parameters_for(mock[0], graph)["backend"] == "sim"
    assert _parameters_for(real[1], graph)["backend"] == "ur_rtde" and _parameters_for(mock[1], graph)["backend"] == "sim"
    assert real[1].parameter_values["robot_ip"] == "192.168.56.101" and not real[1].parameter_values["execute_on_start"]
    assert real[0].parameter_values == {"serial": ""}


def test_a_checkpoint_adds_the_policy_to_real_robot_and_the_arm_starts_in_dry_run(graph) -> None:
    without = [n.spec.key for n in graph.resolve("real_robot", {"launch_rviz": "false"})]
    nodes = {n.spec.key: n for n in graph.resolve("real_robot", {"launch_rviz": "false", "checkpoint": "/ckpt",
                                                                  "instruction": "open the drawer"})}
    assert "policy_robot" not in without and "policy_robot" in nodes
    assert nodes["policy_robot"].parameter_values == {"checkpoint_path": "/ckpt", "instruction": "open the drawer",
                                                      "inference_mode": "rate", "injected_latency_s": 0.0,
                                                      "skills_path": ""}
    assert _parameters_for(nodes["policy_robot"], graph)["available_cameras"] == ["camera"]  # /camera/camera
    assert nodes["ur3_driver"].parameter_values["execute_on_start"] is False  # dry run until ~/enable
    assert nodes["ur3_driver"].parameter_values["checkpoint_path"] == "/ckpt"  # its action space is checked
    assert nodes["ur3_driver"].parameter_values["time_aligned"] is True  # chunks on their observation's clock
    assert nodes["ur3_driver"].parameter_values["chunk_aggregator"] == "latest"
    sim_driver = next(n for n in graph.resolve("sim") if n.spec.key == "ur3_driver_sim")
    assert sim_driver.parameter_values["execute_on_start"] is True  # unattended simulation


def test_arguments_bind_to_parameters_with_their_types(graph) -> None:
    (camera, recorder) = graph.resolve("camera_replay", {"bag": "/data/run.db3", "record": "true",
                                                  "record_path": "/tmp/out", "record_storage": "mcap"})
    assert camera.parameter_values == {"bag_path": "/data/run.db3"}
    assert recorder.parameter_values == {"output_path": "/tmp/out", "storage": "mcap", "compression": "zstd"}
    rviz = graph.resolve("real_robot")[-1]
    assert rviz.spec.package == "rviz2" and rviz.arguments == ("-d", f"{CONFIG}/fedvla.rviz")
    assert (CONFIG / "fedvla.rviz").is_file()


def test_template_bindings_build_per_node_paths(graph) -> None:
    nodes = {n.spec.fully_qualified_name: n for n in graph.resolve("federation", {"federation_dir": "/data/fl",
                                                                                  "rounds": "7",
                                                                                  "robot_b_dataset": "/data/b"})}
    mode = {"federation_mode": "trunk", "base_checkpoint": "", "skill_encryption": "none", "skill_keys": ""}
    assert nodes["/fed_server"].parameter_values == {"state_dir": "/data/fl/server", "rounds": 7, "aggregation": "eda",
                                                      "secure_aggregation": False, **mode}
    assert nodes["/robot_b/fed_client"].parameter_values == {"client_id": "robot_b", "state_dir": "/data/fl/robot_b",
                                                            "dataset": "/data/b", **mode}
    assert nodes["/robot_a/fed_client"].parameter_values["dataset"] == "synthetic"  # bright-square images
    clients = [n for n in nodes.values() if n.spec.executable == "fed_client"]
    assert len({n.parameter_values["client_id"] for n in clients}) == len(clients) == 3


@pytest.mark.parametrize(("profile", "overrides", "message"), [
    ("nope", {}, "profile: unknown profile 'nope' (allowed: real_robot, sim, twin, replay, camera_replay, federation)"),
    ("sim", {"ur_type": "ur10"}, "ur_type: invalid value 'ur10' (allowed: ur3, ur3e)"),
    ("sim", {"launch_rviz": "maybe"}, "launch_rviz: invalid value 'maybe' (allowed: true, false)"),
    ("sim", {"robotip": "1.2.3.4"}, "robotip: unknown launch argument"),
    ("replay", {"record": "true"}, "record: the replay profile does not use this argument (no node of it reads it; "
                                   "profiles that do: real_robot, sim, twin, camera_replay, federation)"),
    ("sim", {"use_mock_hardware": "true"}, "use_mock_hardware: the sim profile does not use this argument"),
    ("federation", {"launch_rviz": "true"}, "launch_rviz: the federation profile does not use this argument"),
])
def test_bad_profiles_and_arguments_are_clear_errors(graph, profile, overrides, message) -> None:
    with pytest.raises(GraphError) as err:
        graph.resolve(profile, overrides)
    assert str(err.value).startswith(message)


def test_graph_validation_catches_mistakes(tmp_path) -> None:
    raw = yaml.safe_load((CONFIG / "graph.yaml").read_text())
    raw["nodes"]["camera_sim_top"]["if"] = "rounds"  # a number as a condition
    with pytest.raises(GraphError, match="condition argument 'rounds' is of type int"):
        Graph(raw, CONFIG)
    raw = yaml.safe_load((CONFIG / "graph.yaml").read_text())
    raw["profiles"]["sim"]["nodes"].append("camera_typo")
    with pytest.raises(GraphError, match="unknown node 'camera_typo'"):
        Graph(raw, CONFIG)
    raw = yaml.safe_load((CONFIG / "graph.yaml").read_text())
    raw["profiles"]["federation"]["argument_defaults"] = {"launch_rviz": False}  # no RViz in that profile
    with pytest.raises(GraphError, match="profiles.federation.argument_defaults: 'launch_rviz' is read by no node"):
        Graph(raw, CONFIG)
    raw = yaml.safe_load((CONFIG / "graph.yaml").read_text())
    raw["nodes"]["recorder"]["parameters"] = ["missing.yaml"]
    with pytest.raises(GraphError, match="missing.yaml does not exist"):
        Graph(raw, CONFIG)


def test_rviz_config_shows_the_stacks_camera_topics_and_the_robot() -> None:
    from fedvla import topics

    rviz = yaml.safe_load((CONFIG / "fedvla.rviz").read_text())
    shown = {d[key]["Value"] for d in rviz["Visualization Manager"]["Displays"]
             for key in ("Topic", "Description Topic") if key in d}
    graph = Graph.load(CONFIG)
    cameras = {n.spec.fully_qualified_name for p in ("real_robot", "sim")
               for n in graph.resolve(p) if n.spec.executable == "camera_node"}
    assert {topics.node_topic(c, topics.COLOR_IMAGE) for c in cameras} <= shown
    # the robot (model from /robot_description, TF), its planned path and tool pose
    classes = {d["Class"] for d in rviz["Visualization Manager"]["Displays"]}
    assert {"rviz_default_plugins/RobotModel", "rviz_default_plugins/TF"} <= classes
    drivers = {n.spec.fully_qualified_name for p in ("real_robot", "sim")
               for n in graph.resolve(p) if n.spec.executable == "ur3_driver"}
    assert drivers == {"/ur3_driver"}
    assert {topics.ROBOT_DESCRIPTION, topics.node_topic("/ur3_driver", topics.PLANNED_PATH),
            topics.node_topic("/ur3_driver", topics.TOOL_POSE)} <= shown
