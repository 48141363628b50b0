"""FedVLA as a Flower App (flwr 1.41, message API): federation across sites that share no DDS domain.

The app is ``flower_app/`` (its ``pyproject.toml`` names :data:`server_app` and :data:`client_app`);
``flwr run flower_app <connection>`` runs it on the Simulation Engine or on a Deployment Engine
(a ``flower-superlink`` and one ``flower-supernode`` per robot).

* **ClientApp** (one per robot): per round it loads the global trunk into its own policy and
  trains with the ROS 2 client's trainer and settings (:class:`LocalTrainingSettings`,
  :func:`~fedvla.app.federation.local_policy`, :func:`~fedvla.model.train.train_policy`) on its
  episode directory, then replies with the trunk and the per-layer expert counts
  (:func:`~fedvla.federation.flower.pack_train_reply`). Stems, head and normaliser never leave
  it: they live in its checkpoint under its state directory, from round to round.
* **ServerApp**: :class:`~fedvla.federation.flower.ExpertDrivenAggregation`, the same
  :class:`~fedvla.federation.aggregator.Aggregator` the ROS 2 server uses, from the trunk of
  the model config; it writes each round's aggregate and EDA weights (``rounds.json``) and the
  final trunk under ``output-dir``.

Where a robot's settings come from: the SuperNode's ``--node-config`` (``dataset``,
``client-id``, ``state-dir``, ``seed``); on the Simulation Engine, where virtual nodes have only
``partition-id``, the run config's ``datasets`` (one per partition, comma-separated, or
``synthetic``) and ``state-root``. Training settings (model config, epochs, batch, lr) are the
run config's, the same for every robot, as the ROS server's model config is.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedvla.app.federation import SYNTHETIC, LocalTrainingSettings, client_dataset, local_policy, trunk_policy
from fedvla.config import ConfigError
from fedvla.federation.flower import ExpertDrivenAggregation, pack_train_reply

ROUNDS_FILE = "rounds.json"
FINAL_TRUNK = "global_trunk.safetensors"
UPDATES_DIR = "updates"  # a client's own record of what it sent (run config record-updates)


@dataclasses.dataclass(kw_only=True)
class FlowerRunSettings:
    """The app's run config (``[tool.flwr.app.config]``, overridable with ``flwr run -c``)."""

    num_server_rounds: int = 3
    model_config: str = "model/tiny.yaml"
    aggregation: str = "eda"  # eda, or fedavg (the w/o EDA ablation)
    init_seed: int = 0
    min_nodes: int = 2
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    synthetic_samples: int = 64
    datasets: str = SYNTHETIC  # simulation: one per partition, comma-separated (or one for all)
    state_root: str = "runs/flower_clients"  # simulation: each virtual node's state directory below
    output_dir: str = "runs/flower_server"
    record_updates: bool = False
    # Secure aggregation with Flower's SecAgg+ (legacy workflow): robots report their expert
    # counts, learn their EDA weights, and upload pre-weighted trunks under SecAgg+ masks.
    secure_aggregation: bool = False
    secagg_clipping_range: float = 8.0  # |w · θ| must stay inside it (checked by each robot)
    secagg_quantization_bits: int = 26  # 2^26 levels over ±clipping_range: 2.4e-7 per value

    @classmethod
    def from_run_config(cls, run_config) -> FlowerRunSettings:
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(key, "is not a setting of the fedvla Flower app",
                                  ", ".join(f.replace("_", "-") for f in known))
            values[name] = value
        return cls(**values)


def _client_settings(context: Context, run: FlowerRunSettings) -> tuple[str, Path, LocalTrainingSettings]:
    """(client id, state directory, training settings) of the robot this ClientApp runs for."""
    node = dict(context.node_config)
    partition = int(node.get("partition-id", 0))
    client_id = str(node.get("client-id") or f"robot_{partition}")
    datasets = [d.strip() for d in run.datasets.split(",")]
    dataset = str(node.get("dataset") or datasets[partition % len(datasets)])
    state_dir = Path(str(node.get("state-dir") or Path(run.state_root) / client_id)).expanduser()
    settings = LocalTrainingSettings(model_config=run.model_config, dataset=dataset,
                                     synthetic_samples=run.synthetic_samples,
                                     seed=int(node.get("seed", run.init_seed + partition)),
                                     local_epochs=run.local_epochs, batch_size=run.batch_size, lr=run.lr, device="cpu")
    return client_id, state_dir, settings


def _secure_only(msg: Message, context: Context, call_next) -> Message:
    """Flower's SecAgg+ client mod on the messages of a SecAgg+ round only (plain rounds pass)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(mods=[_secure_only])
TRAINED_TRUNK = "trained_trunk.safetensors"  # secure rounds: trained, waiting for its EDA weights


def _local_round(msg: Message, context: Context, run: FlowerRunSettings):
    """Train this robot's policy from the message's global trunk; (client id, state dir, round,
    trunk, train result). Its stems, head and normaliser stay in its checkpoint."""
    from safetensors.torch import save_file

    from fedvla.model.checkpoint import load_checkpoint, save_checkpoint
    from fedvla.model.train import train_policy

    client_id, state_dir, settings = _client_settings(context, run)
    server_round = int(msg.content["config"].get("server-round", 0))
    checkpoint = state_dir / "checkpoint"
    if checkpoint.is_dir():  # its own stems, head and normaliser, as the last round left them
        policy, dataset = load_checkpoint(checkpoint), client_dataset(settings, client_id)[1]
    else:
        policy, dataset = local_policy(settings, client_id)
    policy.trunk.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    result = train_policy(policy, dataset, settings.train_config(), show_progress=False,
                          description=f"{client_id} round {server_round}")
    save_checkpoint(policy, checkpoint, metadata={"round": server_round, "federation": "flower"})
    trunk = {k: v.detach().cpu().contiguous() for k, v in policy.trunk.state_dict().items()}
    if run.record_updates:
        (state_dir / UPDATES_DIR).mkdir(parents=True, exist_ok=True)
        save_file({**trunk, "__expert_counts__": result.expert_counts.to(torch.int64),
                   "__num_samples__": torch.tensor([result.num_samples])},
                  str(state_dir / UPDATES_DIR / f"round_{server_round:05d}.safetensors"))
    return client_id, state_dir, server_round, trunk, result


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    run = FlowerRunSettings.from_run_config(context.run_config)
    if run.secure_aggregation:
        return _weighted_upload(msg, context, run)
    _, _, _, trunk, result = _local_round(msg, context, run)
    return Message(pack_train_reply(trunk, result.expert_counts, result.num_samples,
                                    metrics={"train_loss": float(result.epoch_losses[-1])}), reply_to=msg)


@client_app.query()
def report_counts(msg: Message, context: Context) -> Message:
    """A secure round's first step: train, keep the trunk here, report the expert counts alone."""
    from flwr.app import RecordDict
    from safetensors.torch import save_file

    from fedvla.federation.flower import counts_metrics

    run = FlowerRunSettings.from_run_config(context.run_config)
    _, state_dir, server_round, trunk, result = _local_round(msg, context, run)
    save_file(trunk, str(state_dir / TRAINED_TRUNK), metadata={"round": str(server_round)})
    return Message(RecordDict({"metrics": counts_metrics(result.expert_counts, result.num_samples)}), reply_to=msg)


def _weighted_upload(msg: Message, context: Context, run: FlowerRunSettings) -> Message:
    """A secure round's second step, under SecAgg+: the trained trunk times this robot's EDA
    weights (layer by layer), flattened; the server only ever gets the sum over robots."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fedvla.federation.secagg import weighted_trunk_vector
    from fedvla.model.trunk import Trunk

    _, state_dir, _ = _client_settings(context, run)
    fit = compat.recorddict_to_fitins(msg.content, keep_input=True)
    path = state_dir / TRAINED_TRUNK
    with safe_open(str(path), "pt") as stored:
        trained_round = int(stored.metadata()["round"])
    if trained_round != int(fit.config["server-round"]):
        raise RuntimeError(f"{path} holds round {trained_round}'s trunk, SecAgg+ asks for round "
                           f"{fit.config['server-round']}: the robot missed the round's counts step")
    trained = dict(sorted(load_file(str(path)).items()))  # name order: the server unflattens in it
    vector = weighted_trunk_vector(trained, np.asarray(json.loads(str(fit.config["layer-weights"]))),
                                   float(fit.config["non-layer-weight"]), Trunk.layer_of)
    largest = float(np.abs(vector).max())
    if largest > run.secagg_clipping_range:
        raise ValueError(f"a weighted trunk value of {largest:.3g} is outside SecAgg+'s clipping range "
                         f"±{run.secagg_clipping_range:g}: raise secagg-clipping-range")
    reply = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([vector]), num_examples=1, metrics={})
    return Message(compat.fitres_to_recorddict(reply, keep_input=False), reply_to=msg)


def _record_round(output: Path, server_round: int, aggregation: str, node_ids: list[int], layer_weights: np.ndarray,
                  dropped: list[dict]) -> None:
    """Append one round to ``rounds.json``: who was mixed with which (L, C) weights, who was dropped."""
    path = output / ROUNDS_FILE
    rounds = json.loads(path.read_text()) if path.exists() else []
    rounds.append({"round": server_round, "aggregation": aggregation, "node_ids": list(node_ids),
                   "layer_weights": np.round(np.asarray(layer_weights), 6).tolist(), "dropped": dropped,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    path.write_text(json.dumps(rounds, indent=1))


class RecordingEDA(ExpertDrivenAggregation):
    """:class:`ExpertDrivenAggregation` that keeps each round's aggregate and weights on disk."""

    def __init__(self, output: Path, **options) -> None:
        super().__init__(**options)
        self.output = output

    def aggregate_train(self, server_round, replies):
        from safetensors.torch import save_file

        arrays, metrics = super().aggregate_train(server_round, replies)
        report = self.reports[server_round]
        _record_round(self.output, server_round, self.aggregation.value, report.node_ids, report.layer_weights,
                      [dataclasses.asdict(d) | {"reason": d.reason.value} for d in report.dropped])
        if arrays is not None:
            save_file({k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()},
                      str(self.output / f"round_{server_round:05d}.safetensors"))
        return arrays, metrics


def _pre_weighted_fit(weights_by_node: dict[int, tuple[list[float], float]], server_round: int):
    """A legacy Flower strategy for one SecAgg+ round: each robot's FitIns carries its own EDA
    weights; aggregate_fit keeps which robots' vectors are in the sum."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    class PreWeightedFit(LegacyFedAvg):
        survivors: list[int] = []
        total: np.ndarray | None = None

        def configure_fit(self, _round, parameters, client_manager):
            chosen = [p for p in client_manager.all().values() if p.node_id in weights_by_node]
            return [(p, FitIns(parameters, {"server-round": server_round,
                                            "layer-weights": json.dumps(weights_by_node[p.node_id][0]),
                                            "non-layer-weight": weights_by_node[p.node_id][1]})) for p in chosen]

        def aggregate_fit(self, _round, results, failures):
            from flwr.common import parameters_to_ndarrays

            if not results:
                return None, {}
            self.survivors = [proxy.node_id for proxy, _ in results]
            # SecAgg+ hands over the mean of the vectors (every robot reported 1 example): the sum is n times it
            self.total = parameters_to_ndarrays(results[0][1].parameters)[0].astype(np.float64) * len(results)
            return results[0][1].parameters, {}

    count = len(weights_by_node)
    return PreWeightedFit(fraction_fit=1.0, min_fit_clients=count, min_available_clients=count, fraction_evaluate=0.0,
                          initial_parameters=ndarrays_to_parameters([np.zeros(1, np.float32)]))


def _secure_rounds(grid: Grid, context: Context, run: FlowerRunSettings, trunk: dict, output: Path) -> dict:
    """EDA under SecAgg+: per round, robots train and report counts (a plain query), the server
    computes their weights, and SecAgg+ sums the pre-weighted trunks; robots lost during SecAgg+
    are left out and the survivors' weights renormalised, layer by layer."""
    from flwr.app import MessageType, RecordDict
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from safetensors.torch import save_file

    from fedvla.federation.aggregator import Aggregator
    from fedvla.federation.flower import MalformedReply, read_counts_metrics
    from fedvla.federation.secagg import vector_to_trunk
    from fedvla.model.trunk import Trunk

    aggregator = Aggregator(run.aggregation)
    layers = max(Trunk.layer_of(k) for k in trunk if Trunk.layer_of(k) is not None) + 1
    for server_round in range(1, run.num_server_rounds + 1):
        nodes = _wait_for_nodes(grid, run.min_nodes)
        query = [Message(RecordDict({"arrays": ArrayRecord(trunk), "config": ConfigRecord({"server-round": server_round})}),
                         dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
        reported = {}
        for reply in grid.send_and_receive(query):
            try:
                if not reply.has_error():
                    reported[reply.metadata.src_node_id] = read_counts_metrics(reply.content["metrics"])
            except (MalformedReply, KeyError):
                continue
        if len(reported) < run.min_nodes:
            raise RuntimeError(f"round {server_round}: {len(reported)} robots reported counts, min-nodes is {run.min_nodes}")
        node_ids = sorted(reported)
        counts = np.stack([reported[n][0] for n in node_ids])
        samples = [reported[n][1] for n in node_ids]
        weights = aggregator.layer_weights(counts, samples, layers)
        outside = aggregator.non_layer_weights(weights, samples)
        by_node = {n: (weights[:, c].tolist(), float(outside[c])) for c, n in enumerate(node_ids)}
        strategy = _pre_weighted_fit(by_node, server_round)
        bits = run.secagg_quantization_bits
        DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            num_shares=len(node_ids), reconstruction_threshold=max(2, (2 * len(node_ids) + 2) // 3), max_weight=1.0,
            clipping_range=run.secagg_clipping_range, quantization_range=2 ** bits, modulus_range=2 ** min(32, bits + 6)))(
            grid, LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy))
        if strategy.total is None:
            raise RuntimeError(f"round {server_round}: SecAgg+ returned no sum")
        columns = [node_ids.index(n) for n in strategy.survivors]
        summed = vector_to_trunk(strategy.total, {k: trunk[k].double() for k in sorted(trunk)})  # robots' order
        layer_share, outside_share = weights[:, columns].sum(axis=1), outside[columns].sum()
        trunk = {k: (v / (outside_share if Trunk.layer_of(k) is None else layer_share[Trunk.layer_of(k)])).float()
                 for k, v in summed.items()}
        _record_round(output, server_round, f"{aggregator.aggregation.value} under SecAgg+", strategy.survivors,
                      weights[:, columns], [])
        save_file({k: v.contiguous() for k, v in trunk.items()}, str(output / f"round_{server_round:05d}.safetensors"))
    return trunk


def _wait_for_nodes(grid: Grid, count: int, timeout_s: float = 600.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        time.sleep(1.0)
    raise RuntimeError(f"fewer than {count} robots (min-nodes) connected within {timeout_s:g} s")


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from safetensors.torch import save_file

    run = FlowerRunSettings.from_run_config(context.run_config)
    output = Path(run.output_dir).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    (output / ROUNDS_FILE).unlink(missing_ok=True)
    policy = trunk_policy(run.model_config, run.init_seed)
    if run.secure_aggregation:
        final = _secure_rounds(grid, context, run, dict(policy.trunk.state_dict()), output)
        save_file({k: v.contiguous() for k, v in final.items()}, str(output / FINAL_TRUNK))
        return
    strategy = RecordingEDA(output, aggregation=run.aggregation, fraction_train=1.0, fraction_evaluate=0.0,
                            min_train_nodes=run.min_nodes, min_available_nodes=run.min_nodes)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(policy.trunk.state_dict()),
                            num_rounds=run.num_server_rounds, train_config=ConfigRecord({}))
    save_file({k: v.contiguous() for k, v in result.arrays.to_torch_state_dict().items()}, str(output / FINAL_TRUNK))
