"""The Flower EDA strategy: aggregate_train against the eda functions, reply checks, a simulation."""
from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import telemetry
from flwr.supercore.task_identity import TaskIdentity

from fedvla.federation.eda import aggregate_trunks, expert_driven_weights, fedavg_weights
from fedvla.federation.flower import (COUNTS_KEY, COUNTS_SHAPE_KEY, NUM_SAMPLES_KEY, DropReason,
                                      ExpertDrivenAggregation, pack_train_reply, unpack_train_reply)
from fedvla.model.trunk import Trunk

SHAPES = {"blocks.0.ff.router.weight": (4, 8), "blocks.1.ff.router.weight": (4, 8), "norm.weight": (8,)}
LAYERS, EXPERTS = 2, 4
NODE_IDS = [11, 22, 33]


def seeded_trunk(seed: int) -> OrderedDict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return OrderedDict((name, torch.randn(shape, generator=generator)) for name, shape in SHAPES.items())


def seeded_counts(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, size=(LAYERS, EXPERTS))


def three_clients() -> tuple[list[OrderedDict[str, torch.Tensor]], np.ndarray, list[int]]:
    trunks = [seeded_trunk(seed) for seed in range(3)]
    counts = np.stack([seeded_counts(seed) for seed in range(3)])
    counts[1, 0] = 0  # client 1 routed nothing in layer 0: EDA gives it no weight there
    return trunks, counts, [120, 40, 300]


def reply(node_id: int, content: RecordDict | None = None, error: Error | None = None) -> Message:
    # Message(content, reply_to=...) needs the instruction, and creating an instruction needs a
    # running Flower task (TaskIdentity); a reply with explicit metadata needs neither.
    metadata = Metadata(run_id=1, message_id=f"reply-{node_id}", src_node_id=node_id, dst_node_id=1,
                        reply_to_message_id=f"instruction-{node_id}", group_id="1", created_at=time.time(),
                        ttl=600.0, message_type=MessageType.TRAIN)
    return Message(content, metadata=metadata) if error is None else Message(error=error, metadata=metadata)


def good_replies() -> list[Message]:
    trunks, counts, num_samples = three_clients()
    return [reply(node, pack_train_reply(trunk, c, n, metrics={"train_loss": 0.5 + i}))
            for i, (node, trunk, c, n) in enumerate(zip(NODE_IDS, trunks, counts, num_samples))]


def assert_trunks_close(record: ArrayRecord, expected: dict[str, torch.Tensor]) -> None:
    got = record.to_torch_state_dict()
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)


def test_eda_round_equals_the_eda_functions() -> None:
    trunks, counts, num_samples = three_clients()
    strategy = ExpertDrivenAggregation()
    arrays, metrics = strategy.aggregate_train(1, good_replies())

    weights = expert_driven_weights(counts)
    expected = aggregate_trunks(trunks, weights, Trunk.layer_of)
    assert_trunks_close(arrays, expected)
    report = strategy.reports[1]
    assert report.node_ids == NODE_IDS and report.dropped == []
    np.testing.assert_allclose(report.layer_weights, weights)
    assert report.layer_weights[0, 1] == 0.0 and report.layer_weights[1, 1] > 0
    # The weights are not a disguised FedAvg: the router of layer 0 is far from the sample mean.
    fedavg = aggregate_trunks(trunks, np.tile(fedavg_weights(num_samples), (LAYERS, 1)), Trunk.layer_of)
    assert (expected["blocks.0.ff.router.weight"] - fedavg["blocks.0.ff.router.weight"]).abs().max() > 0.1
    # Ordinary metrics are averaged by sample count; the counts are not metrics of the result.
    assert set(metrics) == {"train_loss"}
    assert metrics["train_loss"] == pytest.approx(np.dot(fedavg_weights(num_samples), [0.5, 1.5, 2.5]))


def test_reply_order_does_not_matter() -> None:
    replies = good_replies()
    in_order, _ = ExpertDrivenAggregation().aggregate_train(1, replies)
    shuffled, _ = ExpertDrivenAggregation().aggregate_train(1, [replies[2], replies[0], replies[1]])
    assert_trunks_close(shuffled, in_order.to_torch_state_dict())


def test_fedavg_mode_is_the_sample_weighted_mean_and_needs_no_counts() -> None:
    trunks, _, num_samples = three_clients()
    replies = [reply(node, pack_train_reply(trunk, np.zeros((LAYERS, EXPERTS), dtype=np.int64), n))
               for node, trunk, n in zip(NODE_IDS, trunks, num_samples)]
    del replies[2].content.metric_records["metrics"][COUNTS_KEY]  # FedAvg does not read them

    arrays, _ = ExpertDrivenAggregation(aggregation="fedavg").aggregate_train(1, replies)

    total = sum(num_samples)
    expected = {name: sum(n / total * trunk[name] for n, trunk in zip(num_samples, trunks)) for name in SHAPES}
    assert_trunks_close(arrays, expected)


def _without_counts(content: RecordDict) -> None:
    del content.metric_records["metrics"][COUNTS_KEY]


def _set_metric(key: str, value) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        content.metric_records["metrics"][key] = value
    return corrupt


def _set_counts(flat: list, shape: list[int]) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        content.metric_records["metrics"][COUNTS_KEY] = flat
        content.metric_records["metrics"][COUNTS_SHAPE_KEY] = shape
    return corrupt


def _replace_trunk(trunk: dict[str, torch.Tensor]) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        content.array_records["arrays"] = ArrayRecord(OrderedDict(trunk))
    return corrupt


def _without_metrics(content: RecordDict) -> None:
    del content.metric_records["metrics"]


_good = seeded_trunk(9)
MALFORMED = {
    "counts missing": (_without_counts, DropReason.BAD_COUNTS),
    "counts length differs from their shape": (_set_counts([1] * 7, [LAYERS, EXPERTS]), DropReason.BAD_COUNTS),
    "counts with other experts than the rest": (_set_counts([1] * 10, [LAYERS, 5]), DropReason.BAD_COUNTS),
    "counts with other layers than the trunk": (_set_counts([1] * 12, [3, EXPERTS]), DropReason.BAD_COUNTS),
    "counts shape not two numbers": (_set_counts([1] * 8, [8]), DropReason.BAD_COUNTS),
    "negative counts": (_set_counts([3] * 7 + [-1], [LAYERS, EXPERTS]), DropReason.BAD_COUNTS),
    "non-finite counts": (_set_counts([1.0] * 7 + [float("nan")], [LAYERS, EXPERTS]), DropReason.BAD_COUNTS),
    "infinite counts": (_set_counts([1.0] * 7 + [float("inf")], [LAYERS, EXPERTS]), DropReason.BAD_COUNTS),
    "zero samples": (_set_metric(NUM_SAMPLES_KEY, 0), DropReason.BAD_NUM_SAMPLES),
    "negative samples": (_set_metric(NUM_SAMPLES_KEY, -5), DropReason.BAD_NUM_SAMPLES),
    "samples missing": (lambda c: c.metric_records["metrics"].pop(NUM_SAMPLES_KEY), DropReason.BAD_NUM_SAMPLES),
    "metrics record missing": (_without_metrics, DropReason.BAD_RECORDS),
    "trunk parameter missing": (_replace_trunk({k: v for k, v in _good.items() if k != "norm.weight"}),
                                DropReason.TRUNK_MISMATCH),
    "extra trunk parameter": (_replace_trunk({**_good, "blocks.1.extra": torch.zeros(2)}), DropReason.TRUNK_MISMATCH),
    "trunk parameter of another shape": (_replace_trunk({**_good, "norm.weight": torch.zeros(9)}),
                                         DropReason.TRUNK_MISMATCH),
    "non-finite trunk": (_replace_trunk({**_good, "norm.weight": torch.full((8,), float("nan"))}),
                         DropReason.BAD_TRUNK),
    "integer trunk": (_replace_trunk({**_good, "norm.weight": torch.ones(8, dtype=torch.int64)}), DropReason.BAD_TRUNK),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_reply_is_dropped_and_the_others_aggregate(kind: str, core_warnings: list[str]) -> None:
    corrupt, reason = MALFORMED[kind]
    trunks, counts, _ = three_clients()
    bad_content = pack_train_reply(seeded_trunk(9), seeded_counts(9), 77)
    corrupt(bad_content)
    replies = good_replies()
    replies.insert(1, reply(99, bad_content))  # not last: the check must not depend on the position

    strategy = ExpertDrivenAggregation()
    arrays, metrics = strategy.aggregate_train(4, replies)

    assert_trunks_close(arrays, aggregate_trunks(trunks, expert_driven_weights(counts), Trunk.layer_of))
    report = strategy.reports[4]
    assert report.node_ids == NODE_IDS
    assert [(d.node_id, d.reason) for d in report.dropped] == [(99, reason)]
    assert [m for m in core_warnings if "dropped the reply" in m] == [
        f"round 4: dropped the reply of node 99 ({reason.value}): {report.dropped[0].detail}"]
    assert metrics is not None


def test_an_error_reply_is_dropped() -> None:
    replies = good_replies() + [reply(99, error=Error(code=3, reason="ClientApp raised"))]
    strategy = ExpertDrivenAggregation()
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert [(d.node_id, d.reason) for d in strategy.reports[1].dropped] == [(99, DropReason.ERROR_REPLY)]
    assert "ClientApp raised" in strategy.reports[1].dropped[0].detail


def test_no_valid_reply_gives_no_result() -> None:
    bad = pack_train_reply(seeded_trunk(0), seeded_counts(0), 10)
    _set_metric(NUM_SAMPLES_KEY, 0)(bad)
    strategy = ExpertDrivenAggregation()
    assert strategy.aggregate_train(1, [reply(1, bad), reply(2, error=Error(code=1, reason="x"))]) == (None, None)
    assert {d.reason for d in strategy.reports[1].dropped} == {DropReason.BAD_NUM_SAMPLES, DropReason.ERROR_REPLY}
    assert strategy.aggregate_train(2, []) == (None, None)


def test_the_global_trunk_sent_is_the_reference_even_against_a_majority(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure_train builds instruction Messages, which need a running task's identity.
    for attribute, value in {"_run_id": 1, "_node_id": 0, "_task_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, attribute, value)

    class ThreeNodes:
        def get_node_ids(self) -> list[int]:
            return list(NODE_IDS)

    strategy = ExpertDrivenAggregation(min_available_nodes=3)
    global_trunk = ArrayRecord(seeded_trunk(5))
    assert len(list(strategy.configure_train(1, global_trunk, ConfigRecord(), ThreeNodes()))) == 3

    trunks, counts, num_samples = three_clients()
    wide = [OrderedDict({**trunk, "norm.weight": torch.zeros(9)}) for trunk in trunks[:2]]
    replies = [reply(node, pack_train_reply(trunk, c, n))
               for node, trunk, c, n in zip(NODE_IDS, wide + trunks[2:], counts, num_samples)]
    strategy.aggregate_train(1, replies)
    assert strategy.reports[1].node_ids == [NODE_IDS[2]]
    assert {d.reason for d in strategy.reports[1].dropped} == {DropReason.TRUNK_MISMATCH}


def test_pack_and_unpack_round_trip() -> None:
    trunk = seeded_trunk(3)
    trunk["norm.weight"] = trunk["norm.weight"].to(torch.bfloat16)  # numpy has no bf16: sent as fp32
    counts = torch.tensor([[1, 0, 2, 5], [0, 0, 0, 9]])
    unpacked = unpack_train_reply(pack_train_reply(trunk, counts, 12, metrics={"loss": 0.25}))
    assert list(unpacked.trunk) == list(SHAPES)
    torch.testing.assert_close(unpacked.trunk["blocks.1.ff.router.weight"], trunk["blocks.1.ff.router.weight"])
    torch.testing.assert_close(unpacked.trunk["norm.weight"], trunk["norm.weight"].float())
    np.testing.assert_array_equal(unpacked.expert_counts, counts.numpy())
    assert unpacked.num_samples == 12 and dict(unpacked.metrics) == {"loss": 0.25, NUM_SAMPLES_KEY: 12}
    with pytest.raises(ValueError, match="reserved"):
        pack_train_reply(trunk, counts, 12, metrics={COUNTS_KEY: [1]})


# -- simulation ----------------------------------------------------------------------------------
ROUNDS = 2
INITIAL_SEED = 100


def client_update(partition_id: int, server_round: int,
                  global_trunk: dict[str, torch.Tensor]) -> tuple[OrderedDict[str, torch.Tensor], np.ndarray, int]:
    """A client's deterministic "training": the global trunk plus noise seeded by (partition, round)."""
    seed = 1000 * server_round + partition_id
    noise = seeded_trunk(seed)
    counts = seeded_counts(seed)
    if partition_id == 2 and server_round == 1:
        counts[0] = 0
    trunk = OrderedDict((name, global_trunk[name] + noise[name]) for name in SHAPES)
    return trunk, counts, 10 * (partition_id + 1)


simulation_client = ClientApp()


@simulation_client.train()
def simulation_train(msg: Message, context: Context) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    trunk, counts, num_samples = client_update(int(context.node_config["partition-id"]), server_round,
                                               msg.content["arrays"].to_torch_state_dict())
    return Message(pack_train_reply(trunk, counts, num_samples), reply_to=msg)


simulation_results: dict[str, object] = {}  # written by the ServerApp (a thread of this process)
simulation_server = ServerApp()


@simulation_server.main()
def simulation_main(grid: Grid, context: Context) -> None:
    strategy = ExpertDrivenAggregation(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    result = strategy.start(grid, ArrayRecord(seeded_trunk(INITIAL_SEED)), num_rounds=ROUNDS,
                            timeout=240)  # a wait for replies: Ray workers start slowly on a busy machine
    simulation_results["arrays"] = result.arrays
    simulation_results["reports"] = strategy.reports


@pytest.mark.timeout(600)  # Ray's start and three ClientApps' imports, on a busy machine
def test_run_simulation_matches_direct_aggregation(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray", reason="flwr[simulation] (ray) is not installed")
    from flwr.simulation import run_simulation

    # Nothing leaves the machine: no Flower telemetry (read at import, so patched too), no Ray
    # usage stats; Ray's processes inherit the environment.
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # opts in to Ray's future default, quietly
    simulation_results.clear()
    # Ray is started here, with a small footprint; flwr reuses a running Ray. Like flwr, hand the
    # workers this process's sys.path, so that they can import this module (the ClientApp is
    # pickled by name). A Ray that cannot start fails the test: only a missing ray skips it.
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    try:
        run_simulation(simulation_server, simulation_client, num_supernodes=3,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        ray.shutdown()

    assert "arrays" in simulation_results, "the ServerApp did not finish"
    expected = seeded_trunk(INITIAL_SEED)
    for server_round in range(1, ROUNDS + 1):
        updates = [client_update(partition, server_round, expected) for partition in range(3)]
        counts = np.stack([u[1] for u in updates])
        expected = aggregate_trunks([u[0] for u in updates], expert_driven_weights(counts), Trunk.layer_of)
    assert_trunks_close(simulation_results["arrays"], expected)
    reports = simulation_results["reports"]
    assert sorted(reports) == list(range(1, ROUNDS + 1))
    assert all(len(r.node_ids) == 3 and r.dropped == [] for r in reports.values())
