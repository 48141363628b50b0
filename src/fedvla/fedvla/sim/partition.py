"""Which client holds which demonstrations: the study's federated settings.

* ``task`` (the paper's): one client per task, holding all of that task's training episodes. With
  one task per client, every client's experts see different inputs, but each client's data is
  about equal in size, and EDA's weights stayed near uniform (0.23-0.27 at the cpu scale);
* ``dirichlet``: ``count`` clients, each task's training episodes spread over them in shares drawn
  from Dirichlet(``alpha``) (``alpha`` = 0.5: most clients hold a mix dominated by one or two tasks,
  some hold little of a task; the usual label-skew setting of federated-learning benchmarks);
* ``sizes``: ``count`` clients whose data sizes grow geometrically from the smallest to
  ``size_ratio`` times it, each holding a random mix of tasks (quantity skew).

Both non-paper settings give EDA something to act on: clients whose experts process very different
token counts. Each task's closed-loop evaluation uses the client that holds most of that task's
episodes (its stems and head, the global trunk); validation episodes are held out before the split.
Every client holds at least one episode.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import numpy as np

from fedvla.config import ConfigError, parse_enum, require, require_positive


class SplitKind(str, enum.Enum):
    TASK = "task"
    DIRICHLET = "dirichlet"
    SIZES = "sizes"


@dataclasses.dataclass(kw_only=True)
class ClientSplit:
    kind: SplitKind = SplitKind.TASK
    count: int = 12  # clients (dirichlet, sizes)
    alpha: float = 0.5  # Dirichlet concentration (dirichlet)
    size_ratio: float = 10.0  # the largest client's data over the smallest's (sizes)
    seed: int = 0

    def __post_init__(self) -> None:
        self.kind = parse_enum(SplitKind, self.kind, "clients.kind")
        require(self.count >= 1, "clients.count", f"must be at least 1, got {self.count}")
        require_positive(self.alpha, "clients.alpha")
        require(self.size_ratio >= 1, "clients.size_ratio", f"must be at least 1, got {self.size_ratio}")


# client -> task -> training episode indices of that task
Partition = dict[str, dict[str, list[int]]]


def partition(episodes: Mapping[str, list[int]], split: ClientSplit) -> Partition:
    """Split each task's training ``episodes`` (indices) over the clients of ``split``."""
    if split.kind is SplitKind.TASK:
        return {task: {task: list(indices)} for task, indices in episodes.items()}
    total = sum(len(indices) for indices in episodes.values())
    if total < split.count:
        raise ConfigError("clients.count", f"{split.count} clients for {total} training episodes",
                          f"at most {total} clients, or more episodes per task")
    rng = np.random.default_rng(split.seed)
    names = [f"client_{i:02d}" for i in range(split.count)]
    if split.kind is SplitKind.DIRICHLET:
        return _dirichlet(episodes, names, split.alpha, rng)
    return _sizes(episodes, names, split.size_ratio, rng)


def _dirichlet(episodes: Mapping[str, list[int]], names: list[str], alpha: float, rng) -> Partition:
    for _ in range(1000):  # redraw until every client holds something
        result: Partition = {name: {} for name in names}
        for task, indices in episodes.items():
            shuffled = rng.permutation(indices).tolist()
            shares = rng.dirichlet(np.full(len(names), alpha))
            # cut points of the cumulative shares: every episode goes to exactly one client
            cuts = np.round(np.cumsum(shares) * len(shuffled)).astype(int)
            start = 0
            for name, end in zip(names, cuts):
                if end > start:
                    result[name][task] = sorted(shuffled[start:end])
                start = end
        if all(result[name] for name in names):
            return result
    raise ConfigError("clients.alpha", f"no Dirichlet({alpha}) draw gave each of {len(names)} clients an episode",
                      "fewer clients or a larger alpha")


def _sizes(episodes: Mapping[str, list[int]], names: list[str], ratio: float, rng) -> Partition:
    pooled = [(task, index) for task, indices in episodes.items() for index in indices]
    order = rng.permutation(len(pooled))
    weights = ratio ** (np.arange(len(names)) / max(1, len(names) - 1))
    exact = weights / weights.sum() * len(pooled)
    sizes = np.maximum(1, np.floor(exact)).astype(int)
    for index in np.argsort(sizes - exact)[: max(0, len(pooled) - sizes.sum())]:  # largest remainders first
        sizes[index] += 1
    while sizes.sum() > len(pooled):  # (the one-episode minimum took more than there is)
        sizes[np.argmax(sizes)] -= 1
    result: Partition = {name: {} for name in names}
    start = 0
    for name, size in zip(names, sizes):
        for task, index in sorted(pooled[i] for i in order[start:start + size]):
            result[name].setdefault(task, []).append(index)
        start += size
    return result


def evaluating_client(result: Partition, task: str) -> str:
    """The client whose checkpoint is evaluated on ``task``: the one holding most of its episodes."""
    holders = {name: len(tasks.get(task, ())) for name, tasks in result.items()}
    name = max(holders, key=lambda n: (holders[n], n == task))
    if holders[name] == 0:
        raise ConfigError("clients", f"no client holds an episode of {task}", "a split that covers every task")
    return name
