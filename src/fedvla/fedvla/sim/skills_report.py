"""The skill-federation experiment's report (:mod:`fedvla.sim.skills_study`): success on the new
tasks and on the base tasks (forgetting) with Wilson intervals, paired McNemar tests against the
base alone, the cost of a round at the edge (bytes uploaded, training time, trainable
parameters), plots, and ``run.json`` (command, commit, machine). Every figure comes from the
methods' ``result.json``."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np

from fedvla.sim.report import machine, plot_success, success_table
from fedvla.statistics import mcnemar


@dataclasses.dataclass(frozen=True)
class _Method:  # what success_table and plot_success read of a method
    name: str
    label: str


def _pooled(result: dict, task: str) -> np.ndarray:
    return np.asarray(result["evaluation"][task]["successes"], dtype=bool).reshape(-1)


def claim_lines(results: dict[str, dict], scale) -> list[str]:
    """A sentence per question the experiment asks, from the paired trials."""
    lines = []

    def versus(name: str, tasks) -> tuple[float, float, float]:
        a = np.concatenate([_pooled(results[name], t) for t in tasks])
        b = np.concatenate([_pooled(results["base"], t)[: len(_pooled(results[name], t))] for t in tasks])
        return 100 * a.mean(), 100 * b.mean(), mcnemar(list(a), list(b)).p_value

    if "base" in results and "skills_federated" in results:
        ours, base, p = versus("skills_federated", scale.new_tasks)
        holds = ours > base and p < 0.05
        lines.append(f"- Federated skills add capability on the new tasks: {ours:.1f} % against the base's {base:.1f} % "
                     f"(McNemar p = {p:.3g}): **{'holds' if holds else 'does not hold'} at this scale**.")
        old, base_old, p_old = versus("skills_federated", scale.base_tasks)
        kept = not (old < base_old and p_old < 0.05)
        lines.append(f"- ... without touching the base: on the base tasks {old:.1f} % against {base_old:.1f} % "
                     f"(p = {p_old:.3g}; the base's weights are unchanged by construction): "
                     f"**{'holds' if kept else 'does not hold'} at this scale**.")
    if "skills_federated" in results and "full_ft_federated" in results:
        skills, full = results["skills_federated"]["costs"], results["full_ft_federated"]["costs"]
        ratio = full["train_seconds_per_round"] / max(skills["train_seconds_per_round"], 1e-9)
        lines.append(f"- Skills cut edge compute against full fine-tuning: {skills['train_seconds_per_round']:.1f} s "
                     f"against {full['train_seconds_per_round']:.1f} s of training per robot and round ({ratio:.1f}×), "
                     f"{skills['upload_bytes_per_round'] / 1e6:.2f} MB against "
                     f"{full['upload_bytes_per_round'] / 1e6:.2f} MB uploaded: "
                     f"**{'holds' if ratio > 1 else 'does not hold'} at this scale**.")
    return lines


def cost_table(results: dict[str, dict]) -> list[str]:
    lines = ["| Method | trainable parameters | upload per robot and round | training per robot and round |",
             "|---|---:|---:|---:|"]
    for result in results.values():
        c = result["costs"]
        lines.append(f"| {result['method']['label']} | {c['trainable_parameters']:,} | "
                     f"{c['upload_bytes_per_round'] / 1e6:.3f} MB | {c['train_seconds_per_round']:.1f} s |")
    return lines


def plot_cost(path: Path, results: dict[str, dict], tasks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for result in results.values():
        success = 100 * np.concatenate([_pooled(result, t) for t in tasks]).mean()
        c = result["costs"]
        axes[0].scatter(max(c["upload_bytes_per_round"], 1) / 1e6, success, label=result["method"]["label"])
        axes[1].scatter(max(c["train_seconds_per_round"], 1e-3), success)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_xlabel("upload per robot and round (MB)")
    axes[1].set_xlabel("training per robot and round (s)")
    for ax in axes:
        ax.set_ylabel("success on the new tasks (%)")
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    fig.suptitle("What a round costs a robot, and what it buys")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# "Practical at this size": a robot's encryption and decryption take at most this share of its
# training time per round, and the aggregate stays within this of plaintext (largest error).
HE_TIME_SHARE = 0.10
HE_MAX_ERROR = 1e-5


def aggregation_table(aggregation: list[dict]) -> list[str]:
    if not aggregation:
        return ["(not measured)"]
    first = aggregation[0]
    lines = [f"One skill ({first['parameters']:,} parameters) aggregated over {max(2, first['clients'])} robots "
             "(`fedvla.skills.aggregation_cost`, random deltas of the skill's size):", "",
             "| Method | robot time (s) | server time (s) | upload per robot (MB) | largest error against plaintext |",
             "|---|---:|---:|---:|---:|"]
    return lines + [f"| {f['method']} | {f['client_s']:.3f} | {f['server_s']:.3f} | {f['upload_bytes'] / 1e6:.2f} | "
                    f"{f['max_error']:.1e} |" for f in aggregation]


def he_claim(aggregation: list[dict], results: dict[str, dict]) -> list[str]:
    """Whether CKKS is practical here: the robots' crypto time against their training time per
    round (from the federated skills run), and the error."""
    ckks = next((f for f in aggregation if f["method"].startswith("CKKS")), None)
    federated = results.get("skills_federated")
    if ckks is None or federated is None:
        return []
    train_s = federated["costs"]["train_seconds_per_round"]
    uploads = max(len(r) for h in federated["costs"]["routed_per_round"] for r in h.values()) + 1  # + the router
    crypto_s = ckks["client_s"] * uploads
    holds = crypto_s <= HE_TIME_SHARE * train_s and ckks["max_error"] <= HE_MAX_ERROR
    return [f"- HE aggregation is practical at this size (a robot's CKKS work at most {100 * HE_TIME_SHARE:.0f} % of "
            f"its training per round, error at most {HE_MAX_ERROR:g}): {crypto_s:.2f} s for its {uploads} uploads (its "
            f"skills and the router, each at most a skill's size) against {train_s:.1f} s of training, error "
            f"{ckks['max_error']:.1e}, {ckks['upload_bytes'] / 1e6:.1f} MB per skill: "
            f"**{'holds' if holds else 'does not hold'} at this scale**."]


def write_skills_report(output: Path, scale, base: dict, results: dict[str, dict], *, command: str,
                        started: str, aggregation: list[dict] | None = None) -> Path:
    output = Path(output)
    methods = [_Method(name, r["method"]["label"]) for name, r in results.items()]
    runs = {name: [r] for name, r in results.items()}
    new, old = list(scale.new_tasks), list(scale.base_tasks)
    lines = [f"# Skill federation on a frozen base ({scale.name} scale)", "",
             f"The base was trained centrally on {', '.join(old)} ({base['samples']} samples, {base['epochs']} epochs, "
             f"{base['parameters']:,} parameters) and frozen. The new tasks {', '.join(new)} were learned from their "
             f"robots' demonstrations only, one robot per task, {scale.rounds} rounds × {scale.local_epochs} local "
             "epochs for every method. Success: % of closed-loop trials on held-out layouts (Wilson 95 %).", "",
             "## New tasks", "", *success_table(runs, methods, new), "",
             "## Base tasks (forgetting)", "", *success_table(runs, methods, old), "",
             "## Cost of a round at the edge", "", *cost_table(results), "",
             "## Encrypted aggregation", "", *aggregation_table(aggregation or []), "",
             "## Claims", "", *claim_lines(results, scale), *he_claim(aggregation or [], results), "",
             "![success](success.png) ![cost](cost.png)", ""]
    plot_success(output / "success.png", runs, methods, [*new, *old])
    plot_cost(output / "cost.png", results, new)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    (output / "run.json").write_text(json.dumps({"command": command, "started": started, "commit": commit,
                                                 "scale": dataclasses.asdict(scale), "machine": machine()}, indent=1))
    path = output / "results.md"
    path.write_text("\n".join(lines))
    return path
