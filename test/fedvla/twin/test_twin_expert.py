"""The expert demonstrator in the twin, in process (the driver's own runtime on the physics, in
simulated time): it succeeds on at least nine layouts in ten of every task within the paper's
20-80 steps, through the driver's IK and safety checks (no protective stop)."""
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("pinocchio")

from fedvla.twin.expert import CONTROL_RATE_HZ, EXPERT_ACTION_SPACE, Expert, ExpertConfig, expert_agent  # noqa: E402
from fedvla.twin.inprocess import InProcessTwin  # noqa: E402
from fedvla.twin.tasks import TASKS, task_named  # noqa: E402
from fedvla.twin.workcell import Workcell, WorkcellConfig  # noqa: E402


@pytest.fixture(scope="module")
def twin():
    return InProcessTwin(Workcell(WorkcellConfig()), EXPERT_ACTION_SPACE)


@pytest.mark.parametrize("task", list(TASKS))
def test_the_expert_succeeds_nine_times_in_ten_within_the_papers_episode_length(twin, task) -> None:
    """The expert's ceiling must be at least 90 % (issue 21): checked here on ten layouts per task."""
    results = [twin.run_trial(task, seed, expert_agent, CONTROL_RATE_HZ, max_steps=100) for seed in range(10)]
    assert sum(r.success for r in results) >= 9, [r for r in results if not r.success]
    for result in results:
        assert result.steps <= 80, result
        assert result.protective_stops == 0, result
        if result.success:  # (a step too fast for a joint at some pose is refused; the expert then slows down)
            assert result.steps >= 20 and result.refused_chunks <= 3, result


def test_the_expert_acts_in_its_action_space_and_stops_at_its_step_limit(twin) -> None:
    workcell = twin.workcell
    workcell.reset("sorting_pills", 3)
    expert = Expert(workcell.episode, workcell.object_positions(), ExpertConfig(max_steps=5))
    tool = twin.kinematics.fk(twin.arm.read().q).translation
    actions = [expert.act(tool, workcell.object_positions()) for _ in range(5)]
    assert expert.done
    for action in actions:
        assert action.shape == (EXPERT_ACTION_SPACE.action_dim,)
        assert abs(float(action[:3].dot(action[:3])) ** 0.5) <= ExpertConfig().max_step_units + 1e-6
        assert action[3] in (-1.0, 1.0)
    assert task_named("sorting_pills").instruction("red") == "put the pill bottle into the red tray"


def test_the_in_process_twin_runs_the_twin_profiles_driver_settings() -> None:
    """In-process trials meet the graph's driver: its parameter files, not settings of their own (an
    in-process twin that checked 8 steps of each chunk refused chunks the driver's 4 would take)."""
    import dataclasses

    from fedvla.config import ConfigError
    from fedvla.graph import Graph, find_config_dir
    from fedvla.twin.inprocess import twin_driver_configs

    parameters = Graph.load(find_config_dir()).resolve_node("twin", "ur3_driver").parameters()
    _, safety, retarget, _, controller = twin_driver_configs(EXPERT_ACTION_SPACE)
    assert list(safety.workspace_min) == parameters["workspace_min"]
    assert retarget.position_scale_m == parameters["position_scale_m"]
    from fedvla.robot.controller import ControllerConfig

    assert controller.execute_steps == parameters.get("execute_steps", ControllerConfig().execute_steps)
    assert controller.execute_on_start
    with pytest.raises(ConfigError, match="position unit"):
        twin_driver_configs(dataclasses.replace(EXPERT_ACTION_SPACE, position_scale_m=0.01))
