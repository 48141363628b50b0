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


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    from safetensors.torch import save_file

    from fedvla.model.checkpoint import load_checkpoint, save_checkpoint
    from fedvla.model.train import train_policy

    run = FlowerRunSettings.from_run_config(context.run_config)
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
    return Message(pack_train_reply(trunk, result.expert_counts, result.num_samples,
                                    metrics={"train_loss": float(result.epoch_losses[-1])}), reply_to=msg)


class RecordingEDA(ExpertDrivenAggregation):
    """:class:`ExpertDrivenAggregation` that keeps each round's aggregate and weights on disk."""

    def __init__(self, output: Path, **options) -> None:
        super().__init__(**options)
        self.output = output

    def aggregate_train(self, server_round, replies):
        from safetensors.torch import save_file

        arrays, metrics = super().aggregate_train(server_round, replies)
        report = self.reports[server_round]
        rounds_path = self.output / ROUNDS_FILE
        rounds = json.loads(rounds_path.read_text()) if rounds_path.exists() else []
        rounds.append({"round": server_round, "aggregation": self.aggregation.value, "node_ids": report.node_ids,
                       "layer_weights": np.round(report.layer_weights, 6).tolist(),
                       "dropped": [dataclasses.asdict(d) | {"reason": d.reason.value} for d in report.dropped],
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        rounds_path.write_text(json.dumps(rounds, indent=1))
        if arrays is not None:
            save_file({k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()},
                      str(self.output / f"round_{server_round:05d}.safetensors"))
        return arrays, metrics


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from safetensors.torch import save_file

    run = FlowerRunSettings.from_run_config(context.run_config)
    output = Path(run.output_dir).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    (output / ROUNDS_FILE).unlink(missing_ok=True)
    policy = trunk_policy(run.model_config, run.init_seed)
    strategy = RecordingEDA(output, aggregation=run.aggregation, fraction_train=1.0, fraction_evaluate=0.0,
                            min_train_nodes=run.min_nodes, min_available_nodes=run.min_nodes)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(policy.trunk.state_dict()),
                            num_rounds=run.num_server_rounds, train_config=ConfigRecord({}))
    save_file({k: v.contiguous() for k, v in result.arrays.to_torch_state_dict().items()}, str(output / FINAL_TRUNK))
