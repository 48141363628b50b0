"""Federated skill rounds (``federation_mode: skills``) on the federation transport: the same
requests as the trunk federation (join, status, fetch, chunked signed uploads; the ``fed_server``
and ``fed_client`` nodes' ROS 2 services, or in process), the same round state machine, the same
refusal of hostile uploads with a reason.

Per round r, a client:

1. joins with its base signature's hash (:func:`~fedvla.skills.wire.signature_hash`): a robot
   whose base policy is not the library's is refused (``wrong_model``) before anything else;
2. fetches the manifest (item ""): the router, the library's versions and the skill config;
3. routes its own tasks' instructions (the top-K of each, their union) and fetches only those
   skills (item ``skill_<i>``); the server records what each client fetched this round;
4. fine-tunes them and the router on its demonstrations, the base frozen
   (:func:`~fedvla.skills.training.train_skills`), and uploads per skill the change of its
   weights, with its sample count and tasks (:func:`~fedvla.skills.wire.encode_upload`).

The server checks each upload as a whole (:func:`~fedvla.skills.aggregation.check_skill_delta`
on every part: a skill it did not hand this client this round is ``not_routed``; wrong signature,
shapes, NaN, oversize, bad counts are refused the same way trunk uploads are) and keeps it on disk
before acknowledging it. Closing the round aggregates each skill over the clients that trained it,
and the router over all, sample-weighted, and publishes a new library version
(:class:`~fedvla.skills.library.SkillLibrary`, written atomically with the round it holds, so a
restarted server neither loses nor repeats a round).

Choices where the paper is silent: skills are named ``skill_<i>`` after their router output; the
router is federated like a skill that every client trains; a client's routed skills are the top-K
of each of its instructions, fixed at the start of its round.

Encryption (``skill_encryption: ckks``; the threat model is :mod:`fedvla.skills.encryption`'s): the
server holds the fleet's public key only. Robots upload, per skill, their trained weights times
their sample count as CKKS ciphertexts instead of plaintext deltas; the server checks what it can
(routing, signature, counts, size, ciphertext count under its key), adds the ciphertexts and
publishes the sum with Σ n_c as the skill's next version, so the library it keeps is encrypted
(its first version, the untrained skills it issued, excepted). Robots decrypt what they fetch. The
manifest names the mode and the key's fingerprint: a robot with another key, a robot expecting
encryption from a server in the clear, and the reverse, are refused before anything is trained.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedvla.config import ConfigError, require
from fedvla.federation.protocol import RejectReason, Reply
from fedvla.federation.round_client import FederationError, RoundClient, ServerApi
from fedvla.federation.round_server import Blob, RoundServer, RoundServerConfig
from fedvla.federation.rounds import RoundRecord
from fedvla.federation.state import atomic_write_bytes, atomic_write_json, read_json
from fedvla.federation.uploads import Upload
from fedvla.federation.wire import WireError, sha256_hex
from fedvla.model.policy import Policy
from fedvla.model.train import TrainConfig
from fedvla.skills import encryption
from fedvla.skills.aggregation import SkillUploadError, aggregate_skill_deltas, check_skill_delta, check_skill_routing
from fedvla.skills.inference import write_skill_set
from fedvla.skills.library import SkillLibrary, SkillSignature
from fedvla.skills.modules import ResidualSkill, SkillConfig, SkillRouter
from fedvla.skills.training import SkillTrainResult, train_skills
from fedvla.skills.wire import (ROUTER_ID, Manifest, SkillUploadBlob, decode_manifest, decode_skill, decode_upload,
                                encode_manifest, encode_skill, encode_upload, signature_hash)

log = logging.getLogger("fedvla.skills.federation")
STATE_VERSION = 1
AGGREGATION = "skills"


def skill_id(index: int) -> str:
    return f"skill_{index}"


def skill_index(name: str) -> int:
    return int(name.removeprefix("skill_"))


class SkillEncryption(str, enum.Enum):
    """How skills travel and rest on the server (``skill_encryption``, both nodes)."""

    NONE = "none"  # plaintext deltas, checked value by value (NaN, shapes) by the server
    CKKS = "ckks"  # CKKS ciphertexts the server adds without decrypting (fedvla.skills.encryption)


@dataclasses.dataclass(kw_only=True)
class SkillServerConfig(RoundServerConfig):
    max_skill_upload_bytes: int = 64 << 20  # one skill's delta (a skill has < 1 M parameters: 4 MB in float32)
    library_dir: str = ""  # the skill library ("" : <state_dir>/library)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.max_skill_upload_bytes >= 1024, "max_skill_upload_bytes", f"{self.max_skill_upload_bytes}",
                ">= 1024 bytes")

    @property
    def library_path(self) -> Path:
        return Path(self.library_dir) if self.library_dir else Path(self.state_dir) / "library"


class SkillFederationServer(RoundServer):
    """The skill library's keeper on the federation transport (see the module docstring)."""

    wrong_model_fix = "load the base policy the skill library was made for (its checkpoint hash and action space)"

    def __init__(self, config: SkillServerConfig, skill_config: SkillConfig, signature: SkillSignature,
                 credentials: Mapping[str, str], *, public_key: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``public_key``: the fleet's CKKS public context (``public.ckks``): the federation runs
        encrypted; None: in the clear."""
        super().__init__(config, credentials, clock=clock)
        self.skill_config = skill_config
        self.public_key = public_key
        self.encryption = SkillEncryption.CKKS if public_key is not None else SkillEncryption.NONE
        self.key_fingerprint = encryption.fingerprint(public_key) if public_key is not None else ""
        per_skill = encryption.parameter_count(ResidualSkill(skill_config).state_dict())  # (every skill's size)
        self._parameters = {**{skill_id(i): per_skill for i in range(skill_config.num_skills)},
                            ROUTER_ID: encryption.parameter_count(SkillRouter(skill_config).state_dict())}
        self.library = SkillLibrary(config.library_path, signature)  # refuses a library of another base
        self.model_hash = signature_hash(signature)
        self.state_dir = Path(config.state_dir)
        self.routed: dict[str, list[str]] = {}  # client → the skills it fetched this round
        self._uploads: dict[str, SkillUploadBlob] = {}
        if not self.library.skills:  # a new library: zero-residual skills and a fresh router, version 1
            torch.manual_seed(0)
            self.library.publish({skill_id(i): ResidualSkill(skill_config).state_dict()
                                  for i in range(skill_config.num_skills)}, {}, router=SkillRouter(skill_config).state_dict())
        if not self._resume():
            self._save_state()
        self._cache_round()
        self.timer.restart(clock())

    aggregation_label = AGGREGATION

    def describe(self) -> str:
        sizes = {name: v.parameters for name, versions in self.library.skills.items() for v in versions[-1:]}
        return (f"skill federation of {len(sizes)} skills ({max(sizes.values()) / 1e3:.0f} k parameters each, top-"
                f"{self.skill_config.top_k} routing) on base {self.library.signature.base_hash[:12]}, library "
                f"{self.library.directory}, round {self.round}/{self.config.rounds}, quorum {self.config.quorum}, "
                f"state in {self.state_dir}")

    # -- persistence ------------------------------------------------------------------------------
    def _update_path(self, round_index: int, client_id: str) -> Path:
        return self.state_dir / "updates" / f"round_{round_index:05d}" / f"{client_id}.safetensors"

    def _save_state(self) -> None:
        atomic_write_json(self.state_dir / "state.json", {
            "version": STATE_VERSION, "aggregation": AGGREGATION, "model_hash": self.model_hash,
            "encryption": self.encryption.value, "key_fingerprint": self.key_fingerprint, "round": self.round,
            "finished": self.finished, "joined": sorted(self.joined), "accepted": self.accepted, "routed": self.routed,
            "history": [dataclasses.asdict(r) for r in self.history], "rejections": dict(self.rejections)})

    def _resume(self) -> bool:
        state = read_json(self.state_dir / "state.json")
        if state is None:
            return False
        if state.get("aggregation") != AGGREGATION or state.get("model_hash") != self.model_hash:
            raise ConfigError("state_dir", f"{self.state_dir} holds another federation's state (aggregation "
                              f"{state.get('aggregation')!r}, model hash {state.get('model_hash')!r})",
                              "an empty directory, or this skill federation's state_dir")
        recorded = (state.get("encryption", SkillEncryption.NONE.value), state.get("key_fingerprint", ""))
        if recorded != (self.encryption.value, self.key_fingerprint):
            raise ConfigError("skill_keys", f"{self.state_dir} holds a skill federation run with encryption "
                              f"{recorded[0]!r} (key {recorded[1][:12] or 'none'}), this server has "
                              f"{self.encryption.value!r} (key {self.key_fingerprint[:12] or 'none'})",
                              "the skill_encryption and key pair the federation started with")
        self.round, self.finished = int(state["round"]), bool(state["finished"])
        self.joined, self.routed = set(state["joined"]), {c: list(s) for c, s in state["routed"].items()}
        self.history = [RoundRecord(**r) for r in state["history"]]
        self.rejections.update(state["rejections"])
        for client_id, info in state["accepted"].items():
            blob = self._update_path(self.round, client_id).read_bytes()
            if sha256_hex(blob) != info["sha256"]:
                raise ConfigError("state_dir", f"the accepted skill upload of {client_id} in round {self.round} does "
                                  "not match its recorded sha256", "restore the directory from a backup")
            self._uploads[client_id], self.accepted[client_id] = decode_upload(blob), info
        if self.library.published_round >= self.round and not self.finished:
            # It crashed after publishing the round's aggregate, before saving that it had: finish closing.
            log.warning("round %d was published to the library before a restart: closing it", self.round)
            self._advance(self.round)
        log.info("resumed the skill federation at round %d with %d accepted upload(s)", self.round, len(self.accepted))
        return True

    # -- what a round serves ----------------------------------------------------------------------
    def _cache_round(self) -> None:
        """The blobs of the current round: the manifest and each skill's latest version."""
        signature = self.library.signature
        versions = {name: self.library.latest(name).version for name in sorted(self.library.skills)}
        # The round's weights, read (and hash-checked) once: uploads are checked against them and
        # the round's aggregate is added to them.
        self._states = {name: self.library.load_skill(name, signature) for name in versions}
        self._states[ROUTER_ID] = self.library.load_router(signature)
        if self.encryption is SkillEncryption.NONE and any(map(encryption.is_encrypted, self._states.values())):
            raise ConfigError("skill_encryption", f"the library {self.library.directory} holds encrypted skills and "
                              "this server runs in the clear", "skill_encryption ckks with the fleet's key pair")
        manifest = encode_manifest(Manifest(self.round, versions, self.library.router_version, self.skill_config,
                                            self.model_hash, self._states[ROUTER_ID], self.encryption.value,
                                            self.key_fingerprint))
        self._blobs = {"": Blob(manifest, sha256_hex(manifest))}
        for name, version in versions.items():
            blob = encode_skill(name, version, self._states[name])
            self._blobs[name] = Blob(blob, sha256_hex(blob))

    def _fetch_blob(self, client_id: str, item: str) -> Blob | Reply:
        blob = self._blobs.get(item)
        if blob is None:
            return self._reject(RejectReason.WRONG_PARAMETERS, f"the library has no skill {item[:64]!r} (skills: "
                                f"{', '.join(sorted(self.library.skills))})", client_id)
        if item and client_id and item not in self.routed.setdefault(client_id, []):
            self.routed[client_id].append(item)  # durable: an upload after a restart is still routed
            self._save_state()
        return blob

    def _largest_upload(self) -> int:
        return (self.skill_config.num_skills + 1) * self.config.max_skill_upload_bytes + (1 << 20)

    def _commit_blob(self, client_id: str, upload: Upload, blob: bytes) -> Reply:
        try:
            update = decode_upload(blob)
            if update.client_id != client_id:
                raise WireError(RejectReason.WRONG_SENDER, f"the blob says client {update.client_id!r}")
            if update.round != upload.round:
                raise WireError(RejectReason.WRONG_ROUND, f"the blob says round {update.round}, the upload was "
                                f"signed for round {upload.round}")
            if not 0 < update.num_samples <= self.config.max_num_samples:
                raise WireError(RejectReason.BAD_NUM_SAMPLES, f"{update.num_samples} samples")
            self._check_deltas(client_id, update)
        except WireError as err:
            return self._reject(err.reason, err.detail, client_id)
        atomic_write_bytes(self._update_path(self.round, client_id), blob)  # durable before acknowledged
        self.accepted[client_id] = {"sha256": upload.sha256, "num_samples": update.num_samples}
        self._uploads[client_id] = update
        self._save_state()
        log.info("accepted round %d skill upload from %s (%s; %d bytes, %d samples)", self.round, client_id,
                 ", ".join(sorted(update.deltas)), len(blob), update.num_samples)
        return Reply(ok=True, round=self.round)

    def _check_deltas(self, client_id: str, update: SkillUploadBlob) -> None:
        """Every part of an upload, or none: a refusal names the first bad part. Encrypted, a part
        is checked as far as the server can see into it (:func:`encryption.check_encrypted_upload`)."""
        signature_ok = update.signature_hash == self.model_hash
        routed = [*self.routed.get(client_id, []), ROUTER_ID]
        for delta in update.skill_deltas():
            try:
                if self.public_key is None:
                    check_skill_delta(delta, routed, self._states.get(delta.skill_id, {}), signature_ok,
                                      self.config.max_skill_upload_bytes)
                    continue
                check_skill_routing(delta, routed, signature_ok, self.config.max_skill_upload_bytes)
                try:
                    encryption.check_encrypted_upload(self.public_key, delta.delta, self._parameters[delta.skill_id])
                except encryption.EncryptionError as err:
                    raise SkillUploadError(RejectReason.MALFORMED, f"not this federation's ciphertexts: {err}") from None
            except SkillUploadError as err:
                raise SkillUploadError(err.reason, f"{delta.skill_id}: {err.detail}") from None

    # -- closing a round --------------------------------------------------------------------------
    def _close_round(self, closed_by: str, elapsed: float) -> RoundRecord | None:
        clients = sorted(self._uploads)
        updates = [self._uploads[c] for c in clients]
        if self.public_key is None:
            merged = aggregate_skill_deltas([d for u in updates for d in u.skill_deltas()])
            updated = {name: {k: v + merged[name][k] for k, v in self._states[name].items()} for name in merged}
        else:  # Σ n_c θ_c under encryption, with Σ n_c: robots decrypt and divide
            trained = sorted({name for u in updates for name in u.deltas})
            updated = {name: encryption.sum_states(self.public_key, [(u.deltas[name], u.num_samples) for u in updates
                                                                     if name in u.deltas], self._parameters[name])
                       for name in trained}
        router = updated.pop(ROUTER_ID, None)
        skills = updated
        tasks: dict[str, set[str]] = {}
        for update in updates:
            for name in update.deltas:
                if name != ROUTER_ID:
                    tasks.setdefault(name, set()).update(update.tasks)
        closed = self.round
        versions = self.library.publish(skills, {s: sorted(t) for s, t in tasks.items()}, router=router,
                                        round_index=closed)
        rows = [*sorted(skills), *([ROUTER_ID] if router is not None else [])]
        num_samples = [u.num_samples for u in updates]
        totals = {row: sum(u.num_samples for u in updates if row in u.deltas) for row in rows}
        weights = [[u.num_samples / totals[row] if row in u.deltas else 0.0 for u in updates] for row in rows]
        record = RoundRecord(round=closed, clients=clients, dropped=sorted(c for c in self.joined if c not in clients),
                             num_samples=num_samples, layer_weights=np.round(weights, 6).tolist(),
                             aggregation=AGGREGATION, closed_by=closed_by, duration_s=round(elapsed, 3), rows=rows)
        self.history.append(record)
        self._advance(closed)
        log.info("round %d closed (%s): %s from %s; %s", closed, closed_by,
                 ", ".join(f"{s} v{v}" for s, v in versions.items()) or "no skill", ", ".join(clients),
                 "federation finished" if self.finished else f"round {self.round} open")
        return record

    def _advance(self, closed: int) -> None:
        """Open the round after ``closed`` (its aggregate is in the library)."""
        self.round, self.accepted, self._uploads, self.routed = closed + 1, {}, {}, {}
        self.uploads.discard(lambda upload: upload.round <= closed)
        self.finished = self.round >= self.config.rounds
        self._save_state()
        stale = self.state_dir / "updates" / f"round_{closed - self.config.keep_update_rounds:05d}"
        if stale.is_dir():
            for path in stale.iterdir():
                path.unlink()
            stale.rmdir()
        self._cache_round()
        self.timer.restart(self.clock())


@dataclasses.dataclass
class SkillRoundReport:
    round: int
    routed: list[str]
    train: SkillTrainResult
    upload_bytes: int
    fetch_bytes: int
    seconds: float


def instruction_embeddings(dataset: Dataset) -> torch.Tensor:
    """The distinct instruction embeddings (I, E) of a dataset's demonstrations: what a client routes."""
    if hasattr(dataset, "episodes"):  # fedvla.data.episodes.ChunkDataset
        rows = torch.stack([torch.as_tensor(e["language"]).float().reshape(-1) for e in dataset.episodes])
    elif hasattr(dataset, "language"):  # fedvla.data.synthetic.SquareReachDataset
        rows = torch.as_tensor(dataset.language).float()
    else:
        rows = torch.stack([dataset[i]["language"].float() for i in range(len(dataset))])
    return torch.unique(rows, dim=0)


class SkillFederationClient(RoundClient):
    """A robot: its frozen base, its demonstrations and their instructions (the tasks it trains)."""

    def __init__(self, client_id: str, secret: str, server: ServerApi, base: Policy, signature: SkillSignature,
                 dataset: Dataset, train: TrainConfig, tasks: Sequence[str] = (), *, instructions: torch.Tensor | None = None,
                 heartbeat_interval_s: float = 5.0, upload_attempts: int = 3, state_dir: str | Path = "skill_client",
                 base_checkpoint: str = "", robot_key: tuple[bytes, str] | None = None) -> None:
        """``robot_key``: the fleet's CKKS secret context and its key's fingerprint
        (:func:`encryption.read_robot_key`): this robot takes part in encrypted federations only;
        None: in the clear only."""
        super().__init__(client_id, secret, server, heartbeat_interval_s=heartbeat_interval_s,
                         upload_attempts=upload_attempts)
        self.robot_key = robot_key
        self.base, self.signature, self.dataset, self.train_config = base, signature, dataset, train
        self.tasks = list(tasks)
        self.instructions = instruction_embeddings(dataset) if instructions is None else instructions.float()
        self.last_uploaded_round = -1
        self.state_dir, self.base_checkpoint = Path(state_dir), base_checkpoint

    def join(self) -> None:
        self.join_with(signature_hash(self.signature))

    def fetch_manifest(self, round_index: int, chunk_size: int) -> tuple[Manifest, int]:
        blob = self.fetch_blob(round_index, chunk_size)
        manifest = decode_manifest(blob)
        if manifest.signature_hash != signature_hash(self.signature):
            raise FederationError("fetch", Reply(ok=False, reason=RejectReason.WRONG_MODEL.value,
                                                 detail="the library was made for another base policy"))
        mine = SkillEncryption.CKKS if self.robot_key is not None else SkillEncryption.NONE
        if manifest.encryption != mine.value:
            raise ConfigError("skill_encryption", f"the server runs this skill federation with encryption "
                              f"{manifest.encryption!r}, this robot is set to {mine.value!r}",
                              "the server's skill_encryption (ckks needs the fleet's key pair in skill_keys)")
        if self.robot_key is not None:
            if manifest.key_fingerprint != self.robot_key[1]:
                raise ConfigError("skill_keys", f"the server's key is {manifest.key_fingerprint[:12]}, this robot's "
                                  f"{self.robot_key[1][:12]}", "the fleet's key pair, the one the server's public.ckks "
                                  "came from")
            manifest.router = encryption.decrypt_state(self.robot_key[0], manifest.router,
                                                       SkillRouter(manifest.skill_config).state_dict())
        return manifest, len(blob)

    def route(self, manifest: Manifest) -> list[str]:
        """The skills this robot's instructions route to (the top-K of each, their union)."""
        router = SkillRouter(manifest.skill_config)
        router.load_state_dict(manifest.router)
        with torch.no_grad():
            indices = router(self.instructions).indices
        return [skill_id(i) for i in sorted(set(indices.reshape(-1).tolist()))]

    def fetch_skills(self, manifest: Manifest, names: Sequence[str], chunk_size: int) -> tuple[nn.ModuleList, int]:
        """The library's skills as modules: ``names`` loaded from the server, the others untrained."""
        skills = nn.ModuleList(ResidualSkill(manifest.skill_config) for _ in range(manifest.skill_config.num_skills))
        fetched = 0
        for name in names:
            blob = self.fetch_blob(manifest.round, chunk_size, item=name)
            version, state = decode_skill(blob, name)
            if self.robot_key is not None:
                state = encryption.decrypt_state(self.robot_key[0], state, skills[skill_index(name)].state_dict())
            if version != manifest.versions.get(name):
                raise FederationError("fetch", Reply(ok=False, reason="changed", detail=f"{name} is version {version}, "
                                                     f"the manifest says {manifest.versions.get(name)}: fetch again"))
            skills[skill_index(name)].load_state_dict(state)
            fetched += len(blob)
        return skills, fetched

    def run_round(self, round_index: int, chunk_size: int) -> SkillRoundReport:
        started = time.perf_counter()
        manifest, fetched = self.fetch_manifest(round_index, chunk_size)
        routed = self.route(manifest)
        skills, skill_bytes = self.fetch_skills(manifest, routed, chunk_size)
        # (the weights as fetched: a plaintext upload is their change; an encrypted one the weights themselves)
        before = ({name: {k: v.clone() for k, v in skills[skill_index(name)].state_dict().items()} for name in routed}
                  if self.robot_key is None else {})
        router = SkillRouter(manifest.skill_config)
        router.load_state_dict(manifest.router)
        with self.heartbeating():
            result = train_skills(self.base, skills, router, self.dataset, self.train_config, manifest.skill_config)
        if self.robot_key is None:
            deltas = {name: {k: v.detach() - before[name][k] for k, v in skills[skill_index(name)].state_dict().items()}
                      for name in routed}
            deltas[ROUTER_ID] = {k: v.detach() - manifest.router[k] for k, v in router.state_dict().items()}
        else:  # the trained weights times the samples, encrypted: the server adds them (module docstring)
            trained = {name: skills[skill_index(name)].state_dict() for name in routed}
            trained[ROUTER_ID] = router.state_dict()
            deltas = {name: encryption.encrypt_state(self.robot_key[0], state, len(self.dataset))
                      for name, state in trained.items()}
        blob = encode_upload(SkillUploadBlob(self.client_id, round_index, len(self.dataset), self.tasks,
                                             signature_hash(self.signature), deltas))
        self.upload(blob, round_index)
        self.last_uploaded_round = round_index
        return SkillRoundReport(round_index, routed, result, len(blob), fetched + skill_bytes,
                                time.perf_counter() - started)

    def step(self) -> SkillRoundReport | None:
        """One poll: run the current round if this client has not uploaded to it yet."""
        if not self.joined:
            self.join()
        status = self.server.status()
        if status.finished or status.round <= self.last_uploaded_round or self.client_id in status.accepted:
            self.beat()
            return None
        try:
            return self.run_round(status.round, status.chunk_size)
        except FederationError as err:
            if err.reply.reason in (RejectReason.ROUND_CLOSED.value, RejectReason.FEDERATION_FINISHED.value, "changed"):
                log.warning("%s: round %d moved on without us: %s", self.client_id, status.round, err.reply.detail)
                return None
            raise

    def finished(self) -> bool:
        return self.server.status().finished

    def save_skills(self, directory: str | Path) -> Path:
        """The library's current router and this robot's routed skills, for inference on the base
        (:func:`fedvla.skills.inference.write_skill_set`; the policy node's ``skills_path``)."""
        status = self.server.status()
        manifest, _ = self.fetch_manifest(status.round, status.chunk_size)
        routed = self.route(manifest)
        skills, _ = self.fetch_skills(manifest, routed, status.chunk_size)
        return write_skill_set(directory, manifest.router, {n: skills[skill_index(n)].state_dict() for n in routed},
                               manifest.skill_config, self.signature, round=manifest.round,
                               versions={n: manifest.versions[n] for n in routed},
                               router_version=manifest.router_version, base_checkpoint=self.base_checkpoint)

    def save_final_checkpoint(self) -> Path:
        """``<state_dir>/final``: the router and this robot's skills of the final library (:meth:`save_skills`)."""
        return self.save_skills(self.state_dir / "final")


def run_skill_rounds(server: SkillFederationServer, clients: Sequence[SkillFederationClient], *,
                     max_polls: int = 10_000) -> list[dict]:
    """In-process skill rounds through the same requests as the ROS nodes (the server object is the
    transport): clients poll, the server ticks, until the federation finishes. One entry per round:
    its record and each client's report."""
    history, reports = [], {}
    for _ in range(max_polls):
        if server.finished:
            return history
        for client in clients:
            report = client.step()
            if report is not None:
                reports[client.client_id] = report
        record = server.tick()
        if record is not None:
            history.append({"record": record, "reports": dict(reports)})
            reports = {}
    raise RuntimeError(f"the skill federation did not finish in {max_polls} polls")
