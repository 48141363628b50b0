"""The simulation study's report: tables in the paper's layout beside the paper's numbers, plots,
and the record of how the numbers were made (``run.json``)."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

TASK_LABELS = {"door-lock-v3": "Door Lock", "drawer-close-v3": "Close Drawer", "sweep-into-v3": "Sweep Into",
               "window-open-v3": "Open Window"}
# FedVLA Table 1 (simulation, Meta-World): success %, average then per task in TASK_LABELS order.
PAPER_TABLE1 = {"centralized": [65.0, 86.7, 73.3, 53.3, 46.7], "fedavg": [51.7, 66.7, 73.3, 40.0, 26.7],
                "fedvla": [63.3, 80.0, 80.0, 53.3, 40.0]}
# FedVLA Table 3 (ablations; the paper ran them on its real-robot tasks Clean Up, Trash Collection,
# Open Drawer, Sorting Pills, so only the averages compare, loosely).
PAPER_TABLE3_AVERAGE = {"wo_iosp": 41.1, "wo_dgmoe": 31.7, "wo_eda": 26.7, "fedvla": 63.3}
TABLE1_METHODS = ("centralized", "fedavg", "fedvla")
TABLE3_METHODS = ("wo_iosp", "wo_dgmoe", "wo_eda", "fedvla")
GROUPS = ("target", "surrounding", "background")


def _success(evaluation: dict) -> tuple[float, float]:
    """(mean, std over repeats) in %."""
    rates = 100 * np.asarray(evaluation["repeat_success_rates"], dtype=float)
    return float(rates.mean()), float(rates.std())


def _cell(mean: float, std: float, repeats: int) -> str:
    return f"{mean:.1f} ± {std:.1f}" if repeats > 1 else f"{mean:.1f}"


def success_table(results: dict[str, dict], methods, tasks: list[str]) -> list[str]:
    lines = ["| Method | Avg. Success | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + " |",
             "|---|---:|" + "---:|" * len(tasks)]
    for method in methods:
        result = results[method.name]
        cells, means = [], []
        for task in tasks:
            evaluation = result["evaluation"][task]
            mean, std = _success(evaluation)
            cells.append(_cell(mean, std, len(evaluation["repeat_success_rates"])))
            means.append(mean)
        lines.append(f"| {method.label} | {np.mean(means):.1f} | " + " | ".join(cells) + " |")
    return lines


def paper_table1() -> list[str]:
    labels = {"centralized": "Centralized", "fedavg": "FedAvg", "fedvla": "FedVLA (Ours)"}
    lines = ["| Method (paper) | Avg. Success | " + " | ".join(TASK_LABELS.values()) + " |",
             "|---|---:|" + "---:|" * len(TASK_LABELS)]
    for name, row in PAPER_TABLE1.items():
        lines.append(f"| {labels[name]} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    return lines


def validation_table(results: dict[str, dict], methods, tasks: list[str]) -> list[str]:
    lines = ["| Method | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for method in methods:
        curves = results[method.name]["validation_loss"]
        lines.append(f"| {method.label} | " + " | ".join(
            f"{curves[t][0]:.4f} → {curves[t][-1]:.4f}" for t in tasks) + " |")
    return lines


def experts_table(results: dict[str, dict], methods, tasks: list[str]) -> list[str]:
    lines = ["| Method | Task | experts/token | " + " | ".join(GROUPS) + " |", "|---|---|---:|" + "---:|" * 3]
    for method in methods:
        for task in tasks:
            evaluation = results[method.name]["evaluation"][task]
            if evaluation.get("group_tokens") is None:
                continue
            counts = np.asarray(evaluation["group_expert_counts"], dtype=float)
            tokens = np.asarray(evaluation["group_tokens"], dtype=float)
            per_group = [f"{c.sum() / n:.3f}" if n else "-" for c, n in zip(counts, tokens)]
            lines.append(f"| {method.label} | {TASK_LABELS.get(task, task)} | {evaluation['experts_per_token']:.3f} | "
                         + " | ".join(per_group) + " |")
    return lines


def _average_success(result: dict, tasks: list[str]) -> float:
    return float(np.mean([_success(result["evaluation"][t])[0] for t in tasks]))


def privacy_rows(results: dict[str, dict], methods, tasks: list[str]) -> list[tuple]:
    """(method, z, C, ε, average success %, mean final validation loss) for the methods with DP
    noise and the non-private methods of the same aggregation (their reference, ε = ∞)."""
    private = [m for m in methods if m.federation.get("dp_noise_multiplier", 0) > 0]
    modes = {m.mode for m in private}
    rows = []
    for method in methods:
        if method in private or (method.mode in modes and not method.federation.get("dp_noise_multiplier")):
            result = results[method.name]
            epsilon = result["rounds"][-1].get("dp_epsilon", 0.0) if method in private else float("inf")
            loss = float(np.mean([result["validation_loss"][t][-1] for t in tasks]))
            rows.append((method, method.federation.get("dp_noise_multiplier", 0.0),
                         method.federation.get("dp_clip_norm", 0.0), epsilon, _average_success(result, tasks), loss))
    return rows if private else []


def privacy_table(rows: list[tuple], delta: float) -> list[str]:
    lines = [f"| Method | noise multiplier z | clip norm C | ε (δ = {delta:g}) | Avg. Success | final val. loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for method, z, clip, epsilon, success, loss in sorted(rows, key=lambda r: -r[3]):
        lines.append(f"| {method.label} | {z:g} | {clip:g} | {epsilon:.3g} | {success:.1f} | {loss:.4f} |")
    return lines


def plot_privacy(path: Path, rows: list[tuple]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in rows if np.isfinite(r[3])]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot([r[3] for r in finite], [r[4] for r in finite], "o-", label="client-level DP")
    for r in finite:
        ax.annotate(f"z={r[1]:g}", (r[3], r[4]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for r in rows:
        if not np.isfinite(r[3]):
            ax.axhline(r[4], linestyle="--", color="grey", label=f"{r[0].label} (no DP)")
    ax.set_xscale("log")
    ax.set_xlabel("ε (whole run)")
    ax.set_ylabel("average success (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("Success vs privacy budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_success(path: Path, results: dict[str, dict], methods, tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(tasks), 3.6))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        stats = [_success(results[method.name]["evaluation"][t]) for t in tasks]
        ax.bar(np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width, [m for m, _ in stats], width,
               yerr=[s for _, s in stats], capsize=2, label=method.label)
    ax.set_xticks(np.arange(len(tasks)), [TASK_LABELS.get(t, t) for t in tasks])
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Closed-loop success per task (mean ± std over repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_validation(path: Path, results: dict[str, dict], methods, tasks: list[str]) -> None:
    """Fig. 5: validation loss per round, one panel per task, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in methods:
            curve = results[method.name]["validation_loss"][task]
            ax.plot(np.arange(len(curve)), curve, label=method.label)  # 0: the initial model
        ax.set_title(TASK_LABELS.get(task, task))
        ax.set_xlabel("rounds completed")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("validation loss (Huber, normalised)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_experts(path: Path, result: dict, tasks: list[str], label: str) -> bool:
    """Fig. 6: per task, expert activations per object group (bars per expert) and experts per
    token per group (right axis). False when the method has no IOSP groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in tasks if result["evaluation"][t].get("group_tokens") is not None]
    if not tasks:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        evaluation = result["evaluation"][task]
        counts = np.asarray(evaluation["group_expert_counts"], dtype=float)  # (3, K)
        tokens = np.asarray(evaluation["group_tokens"], dtype=float)
        experts = counts.shape[1]
        width = 0.8 / experts
        for k in range(experts):
            ax.bar(np.arange(3) + (k - (experts - 1) / 2) * width, counts[:, k], width, label=f"expert {k + 1}")
        density = np.divide(counts.sum(1), tokens, out=np.zeros(3), where=tokens > 0)
        right = ax.twinx()
        right.plot(np.arange(3), density, "ko-", label="experts/token")
        right.axhline(counts.sum() / max(tokens.sum(), 1), color="k", linestyle="--", linewidth=0.8,
                      label="experts/token, all groups")
        right.set_ylabel("experts per token")
        ax.set_xticks(np.arange(3), GROUPS, fontsize=8)
        ax.set_ylabel("activations")
        ax.set_title(f"{label}: {TASK_LABELS.get(task, task)}")
    axes[0][0].legend(fontsize=6, ncol=2, loc="upper left")
    right.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import metaworld
        import mujoco

        info.update(mujoco=mujoco.__version__, metaworld=getattr(metaworld, "__version__", "?"))
    except ImportError:
        pass
    return info


def write_report(output: Path, scale, methods, results: dict[str, dict], *, command: str, started: str,
                 config_hash: str) -> Path:
    """results.md, success.png, validation_loss.png, experts.png and run.json under ``output``."""
    output = Path(output)
    tasks = list(scale.collect_config().tasks)
    by_name = {m.name: m for m in methods}
    evaluation = scale.eval_config()
    lines = [f"# Simulation study, scale `{scale.name}`", "",
             f"Command: `{command}`  ", f"Config hash: `{config_hash}`, seed {scale.seed}, started {started}, "
             f"finished {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  ",
             f"Closed loop: {evaluation.trials} trials × {evaluation.repeats} repeats per task, at most "
             f"{evaluation.max_steps} steps; training: {scale.rounds} rounds × {scale.local_epochs} local epochs, "
             f"batch {scale.batch_size}, lr {scale.lr:g}, model `{scale.model_config}`.", ""]
    table1 = [by_name[m] for m in TABLE1_METHODS if m in by_name]
    if table1:
        lines += ["## Table 1: success (%) per task", ""] + success_table(results, table1, tasks)
        lines += ["", "The paper's Table 1:", ""] + paper_table1() + [""]
    table3 = [by_name[m] for m in TABLE3_METHODS if m in by_name]
    if table3:
        lines += ["## Table 3: ablations, success (%) per task", ""] + success_table(results, table3, tasks)
        lines += ["", "The paper's Table 3 averages (its real-robot tasks): "
                  + ", ".join(f"{by_name[m].label} {PAPER_TABLE3_AVERAGE[m]:.1f}" for m in TABLE3_METHODS
                              if m in by_name) + ".", ""]
    privacy = privacy_rows(results, methods, tasks)
    if privacy:
        delta = next(m.federation.get("dp_delta", 1e-5) for m, z, *_ in privacy if z > 0)
        plot_privacy(output / "privacy.png", privacy)
        lines += ["## Client-level differential privacy: success vs ε", ""] + privacy_table(privacy, delta)
        lines += ["", "![privacy](privacy.png)", ""]
    lines += ["## Validation loss (initial model → last round)", ""] + validation_table(results, methods, tasks) + [""]
    experts = experts_table(results, methods, tasks)
    if len(experts) > 2:
        lines += ["## Experts per token by IOSP group (closed loop)", ""] + experts + [""]
    plot_success(output / "success.png", results, methods, tasks)
    plot_validation(output / "validation_loss.png", results, methods, tasks)
    lines += ["![success](success.png)", "", "![validation loss](validation_loss.png)", ""]
    if "fedvla" in results and plot_experts(output / "experts.png", results["fedvla"], tasks, by_name["fedvla"].label):
        lines += ["![experts](experts.png)", ""]
    report = output / "results.md"
    report.write_text("\n".join(lines))
    run = {"command": command, "config_hash": config_hash, "scale": dataclasses.asdict(scale),
           "methods": [dataclasses.asdict(m) | {"mode": m.mode.value} for m in methods], "seed": scale.seed,
           "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
           "seconds": {name: r.get("seconds") for name, r in results.items()}}
    (output / "run.json").write_text(json.dumps(run, indent=1, default=str))
    return report
