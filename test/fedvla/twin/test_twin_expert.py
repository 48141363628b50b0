"""The expert demonstrator in the twin, in process (the driver's own runtime on the physics, in
simulated time): it succeeds on every task within the paper's 20-80 steps, through the driver's
IK and safety checks (no chunk refused, no protective stop)."""
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
def test_the_expert_succeeds_within_the_papers_episode_length(twin, task) -> None:
    for seed in (0, 1):
        result = twin.run_trial(task, seed, expert_agent, CONTROL_RATE_HZ, max_steps=100)
        assert result.success, result
        assert 20 <= result.steps <= 80, result
        assert result.refused_chunks == 0 and result.protective_stops == 0, result


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
