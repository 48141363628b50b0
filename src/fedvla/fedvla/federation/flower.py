"""Expert-Driven Aggregation (EDA) as a Flower strategy (flwr 1.41, message API).

:class:`ExpertDrivenAggregation` is a :class:`flwr.serverapp.strategy.FedAvg` whose
``aggregate_train`` mixes the clients' trunks with :mod:`fedvla.federation.eda` (per-layer weights
from the cosine similarity of the clients' expert counts) instead of one sample-count weight per
client. ``aggregation="fedavg"`` keeps everything else and weights by sample count (the "w/o EDA"
ablation). Sampling, configure/evaluate and the round loop (``Strategy.start``) are FedAvg's.

What a client's train reply carries (:func:`pack_train_reply` builds it, :func:`unpack_train_reply`
reads and checks it; a ClientApp and the strategy share both, so the format lives in one place):

==================================  ==============================================================
``content["arrays"]``               ArrayRecord: the trunk's parameters, nothing else
``content["metrics"]``              MetricRecord:
  ``"num-examples"``                local training samples, > 0 (FedAvg's weight key)
  ``"expert_counts"``               V flattened row-major: L × K non-negative numbers
  ``"expert_counts_shape"``         ``[L, K]``
  anything else                     ordinary metrics (loss …), averaged as FedAvg does
==================================  ==============================================================

Why the counts travel as metrics: the ArrayRecord then holds exactly the trunk, with the same keys
as the global ArrayRecord the server sends, so the reply stays a plain FedAvg reply (any Flower
strategy or tool can read it) and no non-parameter entry can be averaged into the model by
mistake. V is small (L × K integers: 4 layers × 8 experts is 32 numbers), well within what a
MetricRecord list is meant for. A MetricRecord holds only flat lists, hence the separate shape.

Replies are checked one by one; a bad one is dropped with a logged reason (:class:`DropReason`)
and the round goes on with the others: an error reply, missing records, a sample count that is
not a positive finite number, missing/ill-shaped/negative/non-finite counts (EDA only: FedAvg does
not read them), counts whose L differs from the trunk's number of layers or from the other
clients', a non-finite or non-float trunk tensor, or a trunk whose names or shapes differ from the
global trunk sent this round (or, when the strategy has sent none, e.g. when ``aggregate_train`` is
called directly, from the layout most replies share). With no valid reply the round yields
``(None, None)`` and Flower keeps the previous global trunk. FedAvg's own reply check is not used:
one inconsistent reply makes it raise, which ends the whole run.

Simulation (one process; ClientApps run in Ray actors, ``pip install "flwr[simulation]"``)::

    from flwr.app import ArrayRecord, Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    trunk = Trunk(policy_config)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = ExpertDrivenAggregation(min_available_nodes=3, fraction_evaluate=0.0)
        result = strategy.start(grid, ArrayRecord(trunk.state_dict()), num_rounds=10)
        trunk.load_state_dict(result.arrays.to_torch_state_dict())

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        trunk.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        trunk.reset_expert_counts()
        num_samples = ...  # local training; partition: context.node_config["partition-id"]
        return Message(pack_train_reply(trunk.state_dict(), trunk.expert_counts(), num_samples),
                       reply_to=msg)

    run_simulation(server_app, client_app, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})

On a cluster (flwr 1.41: the SuperLink serves the Fleet and Control APIs over HTTP on one port,
8000 by default, on 127.0.0.1 unless ``--host`` says otherwise; drop ``--insecure`` and pass the
``--ssl-*`` files outside a trusted network)::

    flower-superlink --insecure --host 0.0.0.0                      # server machine
    flower-supernode --insecure --superlink SERVER:8000 \\
        --node-config "partition-id=0 num-partitions=3"            # one per robot / GPU box
    flwr run APP_DIR CONNECTION                                     # from any machine

where APP_DIR is a Flower App (a ``pyproject.toml`` whose ``[tool.flwr.app.components]`` names the
``serverapp`` and ``clientapp`` objects, as ``module:attribute``) and CONNECTION a
``[superlink.CONNECTION]`` entry (``address = "SERVER:8000"``, ``insecure = true``) of
``$FLWR_HOME/config.toml`` (``~/.flwr``). Set ``FLWR_TELEMETRY_ENABLED=0`` (and
``RAY_USAGE_STATS_ENABLED=0`` for simulations) where nothing may leave the network.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy import FedAvg

from fedvla.federation.aggregator import Aggregation, Aggregator
from fedvla.federation.eda import NonLayerRule
from fedvla.model.trunk import Trunk

log = logging.getLogger("fedvla.federation.flower")

TRUNK_RECORD_KEY = "arrays"
METRICS_RECORD_KEY = "metrics"
NUM_SAMPLES_KEY = "num-examples"
COUNTS_KEY = "expert_counts"
COUNTS_SHAPE_KEY = "expert_counts_shape"
_COUNTS_KEYS = (COUNTS_KEY, COUNTS_SHAPE_KEY)


class DropReason(str, enum.Enum):
    """Why a train reply was left out of a round; stable strings, logged and kept per round."""

    ERROR_REPLY = "error_reply"  # the ClientApp failed (the reply carries an Error, no content)
    BAD_RECORDS = "bad_records"  # the trunk ArrayRecord or the MetricRecord is missing
    BAD_NUM_SAMPLES = "bad_num_samples"
    BAD_COUNTS = "bad_counts"
    BAD_TRUNK = "bad_trunk"  # a tensor that does not decode, is not float, or is not finite
    TRUNK_MISMATCH = "trunk_mismatch"  # other parameter names or shapes than the reference trunk


class MalformedReply(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class TrainReply:
    """A decoded, individually checked train reply."""

    trunk: OrderedDict[str, torch.Tensor]
    expert_counts: np.ndarray | None  # (L, K) float64; None when not required (not read then)
    num_samples: float
    metrics: MetricRecord  # the reply's other metrics, num-examples included, counts removed


@dataclasses.dataclass(frozen=True)
class DroppedReply:
    node_id: int
    reason: DropReason
    detail: str


@dataclasses.dataclass(frozen=True)
class RoundReport:
    """What one ``aggregate_train`` call did: who was mixed with which weights, who was dropped."""

    server_round: int
    node_ids: list[int]  # the aggregated replies' senders, in the column order of layer_weights
    layer_weights: np.ndarray  # (L, C) as passed to aggregate_trunks
    dropped: list[DroppedReply]


def pack_train_reply(trunk: Mapping[str, torch.Tensor], expert_counts: torch.Tensor | np.ndarray,
                     num_samples: int, *, metrics: Mapping[str, MetricRecordValues] | None = None) -> RecordDict:
    """The content of a ClientApp's train reply: ``Message(pack_train_reply(...), reply_to=msg)``.

    ``expert_counts`` is V (L, K), e.g. ``Trunk.expert_counts()``; ``metrics`` adds ordinary
    metrics (they must not use the reserved keys).
    """
    metric_record = counts_metrics(expert_counts, num_samples, metrics=metrics)
    # numpy (Flower's Array encoding) has no bfloat16: such a trunk travels as float32.
    tensors = OrderedDict((name, t.detach().cpu().float() if t.dtype == torch.bfloat16 else t.detach().cpu())
                          for name, t in trunk.items())
    return RecordDict({TRUNK_RECORD_KEY: ArrayRecord(tensors), METRICS_RECORD_KEY: metric_record})


def counts_metrics(expert_counts: torch.Tensor | np.ndarray, num_samples: int, *,
                   metrics: Mapping[str, MetricRecordValues] | None = None) -> MetricRecord:
    """The MetricRecord of a reply: sample count, V (L, K) flattened with its shape, other metrics.
    A secure round's robots send it alone first (their trunks go through SecAgg+ after)."""
    counts = np.asarray(expert_counts.detach().cpu() if isinstance(expert_counts, torch.Tensor) else expert_counts)
    if counts.ndim != 2:
        raise ValueError(f"expert_counts must be (layers, experts), got shape {counts.shape}")
    extra = dict(metrics or {})
    reserved = set(extra) & {NUM_SAMPLES_KEY, *_COUNTS_KEYS}
    if reserved:
        raise ValueError(f"metrics must not use the reserved keys {sorted(reserved)}")
    # MetricRecord takes Python int/float only, all of one type per list; integer counts (what
    # the MoE layers keep) stay exact as ints.
    flat = counts.reshape(-1)
    flat_values = [int(v) for v in flat] if np.issubdtype(flat.dtype, np.integer) else [float(v) for v in flat]
    return MetricRecord({**extra, NUM_SAMPLES_KEY: int(num_samples), COUNTS_KEY: flat_values,
                         COUNTS_SHAPE_KEY: [int(n) for n in counts.shape]})


def read_counts_metrics(metrics: MetricRecord) -> tuple[np.ndarray, float]:
    """(V (L, K), sample count) of :func:`counts_metrics`; raises :class:`MalformedReply`."""
    num_samples = metrics.get(NUM_SAMPLES_KEY)
    if not _is_number(num_samples) or not math.isfinite(num_samples) or num_samples <= 0:
        raise MalformedReply(DropReason.BAD_NUM_SAMPLES, f"{NUM_SAMPLES_KEY} must be a positive finite number, "
                             f"got {num_samples!r}")
    return _read_counts(metrics), float(num_samples)


def unpack_train_reply(content: RecordDict, *, require_counts: bool = True, trunk_key: str = TRUNK_RECORD_KEY,
                       metrics_key: str = METRICS_RECORD_KEY, num_samples_key: str = NUM_SAMPLES_KEY) -> TrainReply:
    """Decode and check one train reply on its own; raises :class:`MalformedReply` with the reason."""
    arrays = content.array_records.get(trunk_key)
    metrics = content.metric_records.get(metrics_key)
    if arrays is None or metrics is None:
        raise MalformedReply(DropReason.BAD_RECORDS, f"needs ArrayRecord {trunk_key!r} and MetricRecord "
                             f"{metrics_key!r}, got {sorted(content.array_records)} and {sorted(content.metric_records)}")
    num_samples = metrics.get(num_samples_key)
    if not _is_number(num_samples) or not math.isfinite(num_samples) or num_samples <= 0:
        raise MalformedReply(DropReason.BAD_NUM_SAMPLES, f"{num_samples_key} must be a positive finite number, "
                             f"got {num_samples!r}")
    counts = _read_counts(metrics) if require_counts else None
    trunk = OrderedDict()
    for name, array in arrays.items():
        try:
            tensor = torch.from_numpy(array.numpy())
        except (TypeError, ValueError) as error:  # another serialisation, or a dtype needing pickle
            raise MalformedReply(DropReason.BAD_TRUNK, f"{name} does not decode: {error}") from error
        if not tensor.is_floating_point():
            raise MalformedReply(DropReason.BAD_TRUNK, f"{name} has dtype {tensor.dtype}, not a float type")
        if not bool(torch.isfinite(tensor).all()):
            raise MalformedReply(DropReason.BAD_TRUNK, f"{name} has non-finite values")
        trunk[name] = tensor
    if not trunk:
        raise MalformedReply(DropReason.BAD_TRUNK, "the trunk ArrayRecord is empty")
    other_metrics = MetricRecord({k: v for k, v in metrics.items() if k not in _COUNTS_KEYS})
    return TrainReply(trunk=trunk, expert_counts=counts, num_samples=float(num_samples), metrics=other_metrics)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_counts(metrics: MetricRecord) -> np.ndarray:
    shape, flat = metrics.get(COUNTS_SHAPE_KEY), metrics.get(COUNTS_KEY)
    if flat is None or shape is None:
        raise MalformedReply(DropReason.BAD_COUNTS, f"{COUNTS_KEY} and {COUNTS_SHAPE_KEY} are required")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape)):
        raise MalformedReply(DropReason.BAD_COUNTS, f"{COUNTS_SHAPE_KEY} must be [layers, experts] (positive "
                             f"ints), got {shape!r}")
    if not isinstance(flat, list) or len(flat) != shape[0] * shape[1]:
        size = len(flat) if isinstance(flat, list) else "a scalar"
        raise MalformedReply(DropReason.BAD_COUNTS, f"{COUNTS_KEY} has {size} values, {COUNTS_SHAPE_KEY} {shape} "
                             f"needs {shape[0] * shape[1]}")
    counts = np.asarray(flat, dtype=np.float64).reshape(shape)
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise MalformedReply(DropReason.BAD_COUNTS, f"{COUNTS_KEY} must be finite and non-negative")
    return counts


def _layout(trunk: Mapping[str, torch.Tensor]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Names and shapes, in name order: what two trunks must share to be mixed."""
    return tuple(sorted((name, tuple(t.shape)) for name, t in trunk.items()))


class ExpertDrivenAggregation(FedAvg):
    """FedAvg with the train aggregation replaced by EDA (or sample-count FedAvg), per trunk layer.

    ``layer_of(name)`` maps a trunk parameter to its MoE layer (None outside any layer, e.g. the
    final norm); ``non_layer_rule`` says how those are weighted (see :mod:`fedvla.federation.eda`).
    Every other argument is FedAvg's; ``weighted_by_key`` names the sample count.
    """

    def __init__(self, *, aggregation: Aggregation | str = Aggregation.EDA,
                 layer_of: Callable[[str], int | None] = Trunk.layer_of,
                 non_layer_rule: NonLayerRule | str = NonLayerRule.MEAN_OF_LAYERS,
                 metricrecord_key: str = METRICS_RECORD_KEY, **fedavg_options) -> None:
        super().__init__(**fedavg_options)
        self.aggregator = Aggregator(Aggregation(aggregation), NonLayerRule(non_layer_rule))
        self.layer_of = layer_of
        self.metricrecord_key = metricrecord_key
        self.reports: dict[int, RoundReport] = {}
        # Names and shapes of the global trunk sent by the last configure_train: the reference
        # replies are checked against (None until the strategy has sent one).
        self._sent_layout: tuple[tuple[str, tuple[int, ...]], ...] | None = None

    @property
    def aggregation(self) -> Aggregation:
        return self.aggregator.aggregation

    @property
    def non_layer_rule(self) -> NonLayerRule:
        return self.aggregator.non_layer_rule

    def summary(self) -> None:
        super().summary()
        log.info("aggregation: %s, parameters outside the MoE layers: %s", self.aggregation.value,
                 self.non_layer_rule.value)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent_layout = tuple(sorted((name, tuple(array.shape)) for name, array in arrays.items()))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted, dropped = self._valid_replies(replies)
        for drop in dropped:
            log.warning("round %d: dropped the reply of node %d (%s): %s", server_round, drop.node_id,
                        drop.reason.value, drop.detail)
        if not accepted:
            log.warning("round %d: no valid train reply (%d dropped); the global trunk stays as it was",
                        server_round, len(dropped))
            self.reports[server_round] = RoundReport(server_round, [], np.zeros((0, 0)), dropped)
            return None, None
        node_ids = [node_id for node_id, _ in accepted]
        parsed = [reply for _, reply in accepted]
        num_samples = [reply.num_samples for reply in parsed]
        counts = np.stack([reply.expert_counts for reply in parsed]) if self.aggregation is Aggregation.EDA else None
        layers = self._num_layers(parsed[0].trunk) or 1  # FedAvg: a trunk without MoE layers is one row
        order = list(parsed[0].trunk)  # the aggregate wants every trunk in one name order
        trunks = [OrderedDict((name, reply.trunk[name]) for name in order) for reply in parsed]
        mixed, layer_weights = self.aggregator.aggregate(trunks, counts, num_samples, layers, self.layer_of)
        self.reports[server_round] = RoundReport(server_round, node_ids, layer_weights, dropped)
        log.info("round %d: %s over nodes %s (%d dropped); layer weights %s", server_round,
                 self.aggregation.value, node_ids, len(dropped), np.round(layer_weights, 4).tolist())
        return ArrayRecord(OrderedDict(mixed)), self._aggregate_metrics(server_round, parsed)

    def _valid_replies(self, replies: Iterable[Message]) -> tuple[list[tuple[int, TrainReply]], list[DroppedReply]]:
        """Per-reply checks, then the checks against the others (trunk layout, counts shape)."""
        dropped: list[DroppedReply] = []
        decoded: list[tuple[int, TrainReply]] = []
        for message in replies:
            node_id = message.metadata.src_node_id
            if message.has_error():
                dropped.append(DroppedReply(node_id, DropReason.ERROR_REPLY,
                                            f"code {message.error.code}: {message.error.reason}"))
                continue
            try:
                decoded.append((node_id, unpack_train_reply(
                    message.content, require_counts=self.aggregation is Aggregation.EDA,
                    trunk_key=self.arrayrecord_key, metrics_key=self.metricrecord_key,
                    num_samples_key=self.weighted_by_key)))
            except MalformedReply as error:
                dropped.append(DroppedReply(node_id, error.reason, error.detail))

        reference = self._sent_layout or _most_common([_layout(reply.trunk) for _, reply in decoded])
        kept = []
        for node_id, reply in decoded:
            if _layout(reply.trunk) != reference:
                dropped.append(DroppedReply(node_id, DropReason.TRUNK_MISMATCH, _layout_difference(
                    _layout(reply.trunk), reference)))
            else:
                kept.append((node_id, reply))
        if self.aggregation is not Aggregation.EDA or not kept:
            return kept, dropped

        layers = self._num_layers(kept[0][1].trunk)
        shaped = []
        for node_id, reply in kept:
            if layers and reply.expert_counts.shape[0] != layers:
                dropped.append(DroppedReply(node_id, DropReason.BAD_COUNTS, f"counts have {reply.expert_counts.shape[0]} "
                                            f"layers, the trunk has {layers}"))
            else:
                shaped.append((node_id, reply))
        counts_shape = _most_common([reply.expert_counts.shape for _, reply in shaped])
        accepted = []
        for node_id, reply in shaped:
            if reply.expert_counts.shape != counts_shape:
                dropped.append(DroppedReply(node_id, DropReason.BAD_COUNTS, f"counts shape {list(reply.expert_counts.shape)}"
                                            f", most replies have {list(counts_shape)}"))
            else:
                accepted.append((node_id, reply))
        return accepted, dropped

    def _num_layers(self, trunk: Mapping[str, torch.Tensor]) -> int:
        indices = [layer for layer in map(self.layer_of, trunk) if layer is not None]
        return max(indices) + 1 if indices else 0

    def _aggregate_metrics(self, server_round: int, parsed: Sequence[TrainReply]) -> MetricRecord | None:
        # FedAvg's metric aggregation, on records holding the ordinary metrics only (the counts'
        # lists would be averaged too, and fail on differing lengths).
        records = [RecordDict({self.metricrecord_key: reply.metrics}) for reply in parsed]
        try:
            return self.train_metrics_aggr_fn(records, self.weighted_by_key)
        except (TypeError, ValueError, KeyError) as error:
            # Inconsistent ordinary metrics (a list of another length, a missing key) must not
            # cost the round its trunk.
            log.warning("round %d: train metrics not aggregated: %s", server_round, error)
            return None


def _most_common(values: list):
    """The value most replies share; ties go to the earliest (replies arrive in no set order)."""
    return Counter(values).most_common(1)[0][0] if values else None


def _layout_difference(layout: tuple, reference: tuple) -> str:
    names, reference_names = dict(layout), dict(reference)
    missing = sorted(set(reference_names) - set(names))
    extra = sorted(set(names) - set(reference_names))
    reshaped = [f"{name} {names[name]} ≠ {reference_names[name]}" for name in sorted(set(names) & set(reference_names))
                if names[name] != reference_names[name]]
    parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []) + reshaped
    return "; ".join(parts)
