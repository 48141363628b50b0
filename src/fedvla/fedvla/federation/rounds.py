"""When a federation round moves on: the round state machine, apart from requests, storage and
arithmetic (``server.py`` carries out what it decides).

A plain round is open until at least ``quorum`` updates are in and either every live client
(one heard from within the liveness timeout) has uploaded or ``round_timeout_s`` has passed;
then it closes, ``closed_by`` ``all_live_uploaded`` or ``timeout``.

A secure round (:mod:`fedvla.federation.secure_round`) has phases. In ``report`` it waits like a
plain round, for expert-count reports instead of updates, then fixes its participants. Each later
phase waits for the clients it expects that are still live, or ``phase_timeout_s``, then
advances; after ``unmask`` the round closes if at least the Shamir threshold answered, and the
attempt aborts otherwise (the round restarts at the next attempt).
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection
from typing import Any

import numpy as np

from fedvla.federation.secure_round import SecurePhase, SecureRound

ALL_LIVE_UPLOADED = "all_live_uploaded"
TIMEOUT = "timeout"


@dataclasses.dataclass
class RoundRecord:
    """What one closed round did (persisted; published on the round topic)."""

    round: int
    clients: list[str]
    dropped: list[str]
    num_samples: list[int]
    layer_weights: list[list[float]]  # (L, C) in ``clients`` order
    aggregation: str
    closed_by: str  # ALL_LIVE_UPLOADED | TIMEOUT
    duration_s: float
    secure: bool = False  # aggregated under secure aggregation (the server never saw one trunk)
    attempts: int = 1  # secure rounds: attempts it took
    clipped: int = 0  # updates the DP clipping shortened (plain rounds; secure clients clip their own)
    dp_epsilon: float = 0.0  # ε of all rounds so far, at dp_delta (0 without DP noise)
    dp_noise_std: float = 0.0  # the std of the Gaussian noise added to every coordinate (z · sensitivity)
    dp_sensitivity: float = 0.0  # the round's replace-one L2 sensitivity (privacy.replace_one_sensitivity)
    # What layer_weights' rows are when they are not the MoE layers: the skill federation's
    # aggregated skills, then its router (not in the round message, whose rows are "layers").
    rows: list[str] = dataclasses.field(default_factory=list)


class RoundEventKind(str, enum.Enum):
    STARTED = "started"  # a round opened, or a restarted server resumed it
    CLOSED = "closed"  # a round was aggregated (its record comes with the event)
    STATUS = "status"  # periodic: who has uploaded so far
    FINISHED = "finished"  # the last round closed


@dataclasses.dataclass(frozen=True)
class RoundEvent:
    """One fedvla_interfaces/FederationRound message: what the server publishes on the round topic."""

    kind: RoundEventKind
    round: int
    rounds: int
    finished: bool
    aggregation: str
    clients: list[str]  # closed: the aggregated clients; otherwise those accepted so far
    record: RoundRecord | None = None  # closed only (``secure``/``attempts``/DP figures are not in the message)


def round_event_fields(event: RoundEvent) -> dict[str, Any]:
    """FederationRound fields (all but the header)."""
    record = event.record
    weights = np.asarray(record.layer_weights if record else np.zeros((0, 0)), dtype=np.float64)
    return {"event": event.kind.value, "round": int(event.round), "rounds": int(event.rounds),
            "finished": bool(event.finished), "aggregation": event.aggregation,
            "closed_by": record.closed_by if record else "", "clients": list(event.clients),
            "dropped": list(record.dropped) if record else [],
            "num_samples": np.asarray(record.num_samples if record else [], dtype=np.uint32),
            "num_layers": int(weights.shape[0]), "layer_weights": weights.reshape(-1),
            "duration_s": float(record.duration_s) if record else 0.0}


def parse_round_event(msg: Any) -> RoundEvent:
    kind = RoundEventKind(msg.event)  # ValueError names an unknown event
    clients = list(msg.clients)
    record = None
    if kind is RoundEventKind.CLOSED:
        weights = np.asarray(msg.layer_weights, dtype=np.float64)
        if weights.size != msg.num_layers * len(clients) or len(msg.num_samples) != len(clients):
            raise ValueError(f"a closed round of {len(clients)} clients carries {weights.size} weights for "
                             f"{msg.num_layers} layers and {len(msg.num_samples)} sample counts")
        record = RoundRecord(round=int(msg.round), clients=clients, dropped=list(msg.dropped),
                             num_samples=[int(n) for n in msg.num_samples],
                             layer_weights=weights.reshape(msg.num_layers, len(clients)).tolist(),
                             aggregation=msg.aggregation, closed_by=msg.closed_by, duration_s=float(msg.duration_s))
    return RoundEvent(kind, int(msg.round), int(msg.rounds), bool(msg.finished), msg.aggregation, clients, record)


class Step(enum.Enum):
    WAIT = "wait"
    CLOSE = "close"  # aggregate and open the next round
    FIX_PARTICIPANTS = "fix_participants"  # secure: the reports are in, weights can be fixed
    ADVANCE = "advance"  # secure: the next phase
    ABORT = "abort"  # secure: this attempt cannot finish; the round restarts


@dataclasses.dataclass(frozen=True)
class Decision:
    step: Step
    closed_by: str = ""  # CLOSE: ALL_LIVE_UPLOADED or TIMEOUT
    why: str = ""  # ABORT: for the log and the state file


WAIT = Decision(Step.WAIT)


@dataclasses.dataclass(frozen=True)
class RoundLimits:
    quorum: int
    round_timeout_s: float
    phase_timeout_s: float


@dataclasses.dataclass
class RoundTimer:
    """When the current round (attempt) and its current phase started, on the server's clock."""

    round_started: float
    phase_started: float

    @classmethod
    def starting(cls, now: float) -> RoundTimer:
        return cls(now, now)

    def restart(self, now: float) -> None:
        self.round_started = self.phase_started = now


def _close_or_wait(done: Collection[str], live: Collection[str], quorum: int, elapsed: float,
                   timeout_s: float) -> str | None:
    """``closed_by`` once at least ``quorum`` are done and no live client is awaited or time is up."""
    if len(done) < quorum:
        return None
    waiting = any(c not in done for c in live)
    if waiting and elapsed < timeout_s:
        return None
    return TIMEOUT if waiting else ALL_LIVE_UPLOADED


def plain_decision(accepted: Collection[str], live: Collection[str], limits: RoundLimits, timer: RoundTimer,
                   now: float) -> Decision:
    closed_by = _close_or_wait(accepted, live, limits.quorum, now - timer.round_started, limits.round_timeout_s)
    return WAIT if closed_by is None else Decision(Step.CLOSE, closed_by=closed_by)


def secure_decision(secure: SecureRound, live: Collection[str], limits: RoundLimits, timer: RoundTimer,
                    now: float) -> Decision:
    if secure.phase is SecurePhase.REPORT:
        ready = _close_or_wait(secure.reports, live, limits.quorum, now - timer.round_started,
                               limits.round_timeout_s)
        return WAIT if ready is None else Decision(Step.FIX_PARTICIPANTS)
    waiting = any(c in live for c in secure.expected())
    if waiting and now - timer.phase_started < limits.phase_timeout_s:
        return WAIT
    if secure.phase is SecurePhase.UNMASK:
        if len(secure.unmask_answers) >= secure.threshold:
            return Decision(Step.CLOSE, closed_by=TIMEOUT if waiting else ALL_LIVE_UPLOADED)
        return Decision(Step.ABORT, why=f"{len(secure.unmask_answers)} unmasking answer(s), "
                                        f"{secure.threshold} needed")
    return Decision(Step.ADVANCE)
