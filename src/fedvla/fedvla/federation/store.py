"""The federation server's ``state_dir``: what survives a crash, and the checks on reading it back.

Layout::

    state.json                                   round, joined clients, accepted updates (with their
                                                 sha256), history, rejections, secure-round and DP state
    global/round_<r>.safetensors                 the global trunk of round r (the last few rounds)
    updates/round_<r>/<client>.safetensors       accepted plain updates
    updates/round_<r>/<client>.attempt<a>.masked accepted masked uploads of a secure round

Every file is written atomically (:mod:`fedvla.federation.state`), the file before the state that
lists it, so an acknowledged update is never lost. Reading back refuses, with a clear error,
a directory of another model's federation and any file whose content differs from what the state
recorded.
"""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedvla.config import ConfigError
from fedvla.federation.state import atomic_write_bytes, atomic_write_json, read_json
from fedvla.federation.wire import TrunkSpec, WireError, decode_trunk, encode_trunk, sha256_hex

STATE_VERSION = 1
_RESTORE = "restore the directory from a backup"


class ServerStore:
    def __init__(self, state_dir: str | Path, spec: TrunkSpec) -> None:
        self.state_dir = Path(state_dir)
        self.spec = spec

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    def global_path(self, round_index: int) -> Path:
        return self.state_dir / "global" / f"round_{round_index:05d}.safetensors"

    def _round_dir(self, round_index: int) -> Path:
        return self.state_dir / "updates" / f"round_{round_index:05d}"

    def update_path(self, round_index: int, client_id: str) -> Path:
        return self._round_dir(round_index) / f"{client_id}.safetensors"

    def masked_path(self, round_index: int, attempt: int, client_id: str) -> Path:
        return self._round_dir(round_index) / f"{client_id}.attempt{attempt}.masked"

    # -- writing --------------------------------------------------------------------------------
    def save_state(self, fields: Mapping[str, Any]) -> None:
        atomic_write_json(self.state_path, {"version": STATE_VERSION, "trunk_hash": self.spec.trunk_hash, **fields})

    def write_global(self, round_index: int, trunk: Mapping[str, torch.Tensor]) -> None:
        atomic_write_bytes(self.global_path(round_index), encode_trunk(trunk, self.spec, round_index))

    def write_update(self, round_index: int, client_id: str, blob: bytes) -> None:
        atomic_write_bytes(self.update_path(round_index, client_id), blob)

    def write_masked(self, round_index: int, attempt: int, client_id: str, blob: bytes) -> None:
        atomic_write_bytes(self.masked_path(round_index, attempt, client_id), blob)

    def prune(self, closed: int, keep_rounds: int) -> None:
        """Drop the update files and the global trunk of rounds older than the last ``keep_rounds``."""
        stale = closed - keep_rounds
        if stale >= 0:
            shutil.rmtree(self._round_dir(stale), ignore_errors=True)
            self.global_path(stale).unlink(missing_ok=True)

    # -- reading back ---------------------------------------------------------------------------
    def load_state(self) -> dict | None:
        """The saved state (None for a new federation); refuses another model's directory."""
        state = read_json(self.state_path)
        if state is None:
            return None
        if state.get("version") != STATE_VERSION or state.get("trunk_hash") != self.spec.trunk_hash:
            raise ConfigError("state_dir", f"{self.state_path} belongs to another federation (trunk hash "
                              f"{state.get('trunk_hash')!r}, this model's is {self.spec.trunk_hash!r})",
                              "an empty directory, or the state_dir of this model's federation")
        return state

    def read_global(self, round_index: int) -> dict[str, torch.Tensor]:
        try:
            blob_round, trunk = decode_trunk(self.global_path(round_index).read_bytes(), self.spec)
        except (OSError, WireError) as err:
            raise ConfigError("state_dir", f"the global trunk of round {round_index} is unreadable: {err}",
                              _RESTORE) from None
        if blob_round != round_index:
            raise ConfigError("state_dir", f"global trunk file says round {blob_round}, state says {round_index}",
                              _RESTORE)
        return trunk

    def read_update(self, round_index: int, client_id: str, sha256: str) -> bytes:
        """An accepted update's bytes, as recorded."""
        try:
            blob = self.update_path(round_index, client_id).read_bytes()
        except OSError as err:
            raise ConfigError("state_dir", f"the accepted update of {client_id} in round {round_index} is "
                              f"unreadable: {err}", _RESTORE) from None
        if sha256_hex(blob) != sha256:
            raise ConfigError("state_dir", f"the accepted update of {client_id} in round {round_index} "
                              "does not match its recorded sha256", _RESTORE)
        return blob

    def read_masked(self, round_index: int, attempt: int, client_id: str) -> bytes:
        return self.masked_path(round_index, attempt, client_id).read_bytes()
