"""Offline (open-loop) evaluation of a policy on a recorded rosbag2 episode.

The bag's camera images, joint states, instruction (and scene parses, for an IOSP policy) are
sampled at the policy's rate exactly as the dataset importer does (:mod:`fedvla.data.bag_import`),
each step goes through :class:`fedvla.app.policy_runtime.PolicyRuntime` (the policy node's code), and
the predicted chunk is compared with the actions the robot executed at the same instants:

* first-action error per action dimension (MAE, RMSE, and MAE ÷ the recorded action's std, so that
  dimensions in different units compare);
* chunk error: the mean absolute error over a chunk's steps that the bag covers, and its growth
  with the step in the chunk;
* latency of every policy step (median, p90, max) and experts per token.

The ROS graph's ``replay`` profile (bag player → policy node → replay evaluator) collects the same
:class:`ReplayRecord` from topics and writes the same report.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedvla import topics
from fedvla.config import require, require_positive
from fedvla.data.bag_import import BagEpisodeConfig, BagSampling, executed_action, read_bag_steps
from fedvla.paths import run_directory

REPORT_FILE = "replay.md"
METRICS_FILE = "replay.json"
PLOT_FILE = "replay.png"


@dataclasses.dataclass
class ReplayRecord:
    """Per policy step: bag time, the predicted chunk (H, A), the recorded actions at the chunk's
    instants (H, A; NaN where the bag does not cover them), latency and experts per token (NaN
    when unknown)."""

    stamps_ns: list[int] = dataclasses.field(default_factory=list)
    predicted: list[np.ndarray] = dataclasses.field(default_factory=list)
    recorded: list[np.ndarray] = dataclasses.field(default_factory=list)
    latency_s: list[float] = dataclasses.field(default_factory=list)
    experts_per_token: list[float] = dataclasses.field(default_factory=list)

    def add(self, stamp_ns: int, predicted: np.ndarray, recorded: np.ndarray, latency_s: float = float("nan"),
            experts_per_token: float = float("nan")) -> None:
        if predicted.shape != recorded.shape:
            raise ValueError(f"predicted chunk {predicted.shape} and recorded actions {recorded.shape} differ in shape")
        self.stamps_ns.append(int(stamp_ns))
        self.predicted.append(np.asarray(predicted, dtype=np.float64))
        self.recorded.append(np.asarray(recorded, dtype=np.float64))
        self.latency_s.append(float(latency_s))
        self.experts_per_token.append(float(experts_per_token))

    def __len__(self) -> int:
        return len(self.stamps_ns)


@dataclasses.dataclass
class ReplayMetrics:
    steps: int
    horizon: int
    action_dim: int
    first_action_mae: list[float]  # per dimension
    first_action_rmse: list[float]
    first_action_normalised_mae: list[float]  # MAE / std of the recorded action (NaN for a constant one)
    chunk_mae: float  # mean over steps of the mean |error| over the chunk's covered steps and dimensions
    chunk_mae_by_step: list[float]  # (H,): mean |error| at chunk step h
    latency_ms: dict[str, float]  # median, p90, max, mean (empty when unknown)
    experts_per_token: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _nan_to_none(values):
    return [None if not np.isfinite(v) else float(v) for v in values]


def replay_metrics(record: ReplayRecord) -> ReplayMetrics:
    if not len(record):
        raise ValueError("no policy step was compared: nothing to report")
    predicted, recorded = np.stack(record.predicted), np.stack(record.recorded)  # (N, H, A)
    error = np.abs(predicted - recorded)
    first = error[:, 0]
    covered = np.isfinite(first).all(1)
    first = first[covered]
    spread = np.nanstd(recorded[:, 0], axis=0)
    mae = first.mean(0) if len(first) else np.full(error.shape[2], np.nan)
    latency = np.asarray(record.latency_s) * 1e3
    latency = latency[np.isfinite(latency)]
    epts = np.asarray(record.experts_per_token)
    epts = epts[np.isfinite(epts)]
    return ReplayMetrics(
        steps=len(record), horizon=error.shape[1], action_dim=error.shape[2],
        first_action_mae=mae.tolist(),
        first_action_rmse=(np.sqrt((first ** 2).mean(0)) if len(first) else mae).tolist(),
        first_action_normalised_mae=_nan_to_none(np.divide(mae, spread, out=np.full_like(mae, np.nan),
                                                           where=spread > 1e-9)),
        chunk_mae=float(np.nanmean(np.nanmean(error, axis=(1, 2)))),
        chunk_mae_by_step=_nan_to_none(np.nanmean(error, axis=(0, 2))),
        latency_ms={"median": float(np.median(latency)), "p90": float(np.percentile(latency, 90)),
                    "max": float(latency.max()), "mean": float(latency.mean())} if len(latency) else {},
        experts_per_token=float(epts.mean()) if len(epts) else None)


def recorded_future(actions_by_stamp: dict[int, np.ndarray], t_ns: int, horizon: int, period_ns: int,
                    action_dim: int) -> np.ndarray:
    """(H, A) recorded actions at ``t_ns`` + h·period for h < H; NaN where the bag has no step at
    exactly that instant (past its end, or a dropped step)."""
    out = np.full((horizon, action_dim), np.nan)
    for h in range(horizon):
        action = actions_by_stamp.get(t_ns + h * period_ns)
        if action is not None:
            out[h] = action
    return out


def replay_bag(bag: str | Path, runtime, *, control_rate_hz: float = 0.0, every: int = 1,
               max_input_age_s: float = 0.5, instruction: str = "",
               on_step: Callable[[int, BagSampling], None] | None = None) -> tuple[ReplayRecord, BagSampling]:
    """Run ``runtime`` (a PolicyRuntime) on every ``every``-th sampled step of the bag, sampled at
    ``control_rate_hz`` (default: the rate the recorded action chunks were executed at)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    config = BagEpisodeConfig(camera_names=runtime.camera_names, proprio_dim=runtime.model_config.proprio_dim,
                              control_rate_hz=control_rate_hz,
                              proprio_joint_names=runtime.config.proprio_joint_names, iosp=runtime.uses_iosp,
                              max_input_age_s=max_input_age_s, instruction=instruction)
    sampling = BagSampling()
    actions: dict[int, np.ndarray] = {}
    predictions = []
    for n, step in enumerate(read_bag_steps(bag, config, sampling)):
        actions[step.stamp_ns] = step.action
        if n % every == 0:
            result = runtime.step(step.images, step.proprio, step.instruction, step.selections)
            if result.chunk.shape[1] != len(step.action):
                raise ValueError(f"the policy predicts {result.chunk.shape[1]} action dimensions, the bag records "
                                 f"{len(step.action)}")
            predictions.append((step.stamp_ns, result))
        if on_step is not None:
            on_step(n, sampling)
    record = ReplayRecord()
    for stamp, result in predictions:
        horizon, dim = result.chunk.shape
        record.add(stamp, result.chunk, recorded_future(actions, stamp, horizon, sampling.period_ns, dim),
                   result.latency_s, result.experts_per_token)
    return record, sampling


@dataclasses.dataclass(kw_only=True)
class ReplayEvaluatorConfig:
    """Settings of the replay profile's evaluator node (its parameters)."""

    output_dir: str = ""  # empty: runs/replay_<date>_<time>
    predicted_topic: str = topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK)
    recorded_topic: str = topics.recorded_topic(topics.node_topic(topics.POLICY_NODE, topics.ACTION_CHUNK))
    done_topic: str = topics.node_topic(topics.BAG_PLAYER_NODE, topics.PLAYER_DONE)
    settle_s: float = 2.0  # wall time to wait for the last predictions once the bag is out
    bag_path: str = ""  # for the report only
    checkpoint_path: str = ""  # for the report only

    def __post_init__(self) -> None:
        require_positive(self.settle_s, "settle_s")
        require(self.predicted_topic != self.recorded_topic, "recorded_topic",
                "is the predicted topic: the live policy and the recording would mix",
                "the player's recorded_prefix + the policy's action topic")

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or run_directory("replay")).expanduser()


class LiveReplay:
    """A :class:`ReplayRecord` from action chunks seen on topics while a bag plays (the replay
    profile's evaluator node): the recorded chunks as the bag holds them, the live policy's
    predictions stamped with the (simulated) bag time of their inputs. Prediction step h is
    compared with the recorded action executed at ``stamp + h · step_period``."""

    def __init__(self) -> None:
        self._recorded: list[tuple[int, np.ndarray, float]] = []  # (stamp, (H, A), step period s), by stamp
        self._predicted: list[tuple[int, np.ndarray, float, float]] = []

    def add_recorded(self, stamp_ns: int, actions: np.ndarray, step_period_s: float) -> None:
        bisect.insort(self._recorded, (int(stamp_ns), np.asarray(actions), float(step_period_s)),
                      key=lambda r: r[0])

    def add_predicted(self, stamp_ns: int, actions: np.ndarray, step_period_s: float,
                      compute_time_s: float = float("nan")) -> None:
        self._predicted.append((int(stamp_ns), np.asarray(actions), float(step_period_s), float(compute_time_s)))

    @property
    def counts(self) -> tuple[int, int]:
        return len(self._recorded), len(self._predicted)

    def recorded_at(self, t_ns: int) -> np.ndarray | None:
        i = bisect.bisect_right(self._recorded, t_ns, key=lambda r: r[0]) - 1
        if i < 0:
            return None
        stamp, actions, period = self._recorded[i]
        return executed_action(stamp, actions, period, t_ns)

    def record(self) -> ReplayRecord:
        record = ReplayRecord()
        for stamp, chunk, period, compute_s in sorted(self._predicted, key=lambda p: p[0]):
            recorded = np.full(chunk.shape, np.nan)
            for h in range(chunk.shape[0]):
                action = self.recorded_at(stamp + round(h * period * 1e9))
                if action is not None and action.shape == chunk.shape[1:]:
                    recorded[h] = action
            if np.isfinite(recorded[0]).all():  # predictions before the first recorded action are not compared
                record.add(stamp, chunk, recorded, compute_s)
        return record


def write_replay_report(output: str | Path, record: ReplayRecord, *, title: str, details: dict) -> ReplayMetrics:
    """``replay.md`` (tables), ``replay.json`` (metrics, details, per-step data) and ``replay.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    metrics = replay_metrics(record)
    dims = range(metrics.action_dim)
    lines = [f"# {title}", ""] + [f"- {key}: {value}" for key, value in details.items()] + [
        f"- policy steps compared: {metrics.steps}, chunk horizon {metrics.horizon}", "",
        "## First action of each chunk vs the recorded action", "",
        "| dimension | MAE | RMSE | MAE / recorded std |", "|---|---:|---:|---:|"]
    for d in dims:
        norm = metrics.first_action_normalised_mae[d]
        lines.append(f"| action_{d} | {metrics.first_action_mae[d]:.4f} | {metrics.first_action_rmse[d]:.4f} | "
                     f"{'-' if norm is None else f'{norm:.3f}'} |")
    lines += ["", f"## Chunk error: {metrics.chunk_mae:.4f} (mean absolute error over a chunk's steps)", "",
              "| chunk step | " + " | ".join(str(h) for h in range(metrics.horizon)) + " |",
              "|---|" + "---:|" * metrics.horizon,
              "| MAE | " + " | ".join("-" if v is None else f"{v:.4f}" for v in metrics.chunk_mae_by_step) + " |", ""]
    if metrics.latency_ms:
        lat = metrics.latency_ms
        lines += [f"## Latency per policy step: median {lat['median']:.1f} ms, p90 {lat['p90']:.1f} ms, "
                  f"max {lat['max']:.1f} ms", ""]
    if metrics.experts_per_token is not None:
        lines += [f"Experts per token: {metrics.experts_per_token:.3f}", ""]
    lines += [f"![replay]({PLOT_FILE})", ""]
    (output / REPORT_FILE).write_text("\n".join(lines))
    per_step = {"stamps_ns": record.stamps_ns, "predicted": [p.tolist() for p in record.predicted],
                "recorded": [[_nan_to_none(row) for row in r] for r in record.recorded],
                "latency_s": _nan_to_none(record.latency_s)}
    (output / METRICS_FILE).write_text(json.dumps({"title": title, "details": details, "metrics": metrics.to_dict(),
                                                   "per_step": per_step}, indent=1))
    plot_replay(output / PLOT_FILE, record, metrics)
    return metrics


def plot_replay(path: Path, record: ReplayRecord, metrics: ReplayMetrics) -> None:
    """Predicted first action vs recorded, per dimension over the bag's time; chunk error per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = (np.asarray(record.stamps_ns) - record.stamps_ns[0]) / 1e9
    predicted, recorded = np.stack(record.predicted)[:, 0], np.stack(record.recorded)[:, 0]
    panels = metrics.action_dim + 1
    fig, axes = plt.subplots(panels, 1, figsize=(7.5, 1.7 * panels + 0.6), squeeze=False)
    for d in range(metrics.action_dim):
        ax = axes[d][0]
        ax.plot(t, recorded[:, d], "k-", linewidth=1.2, label="recorded")
        ax.plot(t, predicted[:, d], "C1.-", markersize=3, linewidth=0.8, label="predicted (first of chunk)")
        ax.set_ylabel(f"action_{d}")
    axes[0][0].legend(fontsize=7, loc="upper right")
    axes[metrics.action_dim - 1][0].set_xlabel("bag time (s)")
    ax = axes[-1][0]
    by_step = [np.nan if v is None else v for v in metrics.chunk_mae_by_step]
    ax.bar(np.arange(metrics.horizon), by_step, color="C0")
    ax.set_xticks(np.arange(metrics.horizon))
    ax.set_xlabel("step within the predicted chunk")
    ax.set_ylabel("MAE")
    fig.suptitle(f"Open-loop replay: first-action MAE {np.nanmean(metrics.first_action_mae):.3f}, chunk MAE "
                 f"{metrics.chunk_mae:.3f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
