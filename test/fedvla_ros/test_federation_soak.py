"""The federation soak (fedvla_ros/federation_soak): fed_server and four fed_client processes with
clients killed and restarted, one server restart, duplicated, stale and delayed uploads; every
update a client saw acknowledged must be in the persisted state. The default run has a short
version; ``test/run -m soak`` runs 50 rounds."""
from __future__ import annotations

import json
import subprocess

import pytest

from fedvla.runner import find_executable

pytestmark = pytest.mark.ros


def _soak(tmp_path, *options: str, timeout_s: float) -> dict:
    executable = find_executable("fedvla_ros", "federation_soak")
    if executable is None:
        pytest.skip("fedvla_ros/federation_soak is not installed: run .ci/setup")
    result = subprocess.run([str(executable), "--output", str(tmp_path), *options], capture_output=True, text=True,
                            timeout=timeout_s)
    print(result.stdout)
    figures = json.loads((tmp_path / "soak.json").read_text())
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return figures


def _check(figures: dict, rounds: int) -> None:
    assert figures["finished"] and figures["rounds_completed"] == rounds
    assert figures["acknowledged_missing_from_state"] == [] and figures["acknowledged_updates"] >= rounds
    assert figures["server_starts"] == 2 and figures["client_kills"] >= 1
    # quorum 2: at least two updates close each round; kills spread the rest over the clients
    assert figures["accepted_updates"] >= 2 * rounds
    assert sum(figures["accepted_per_client"][f"robot_{i}"] >= 1 for i in range(4)) >= 3
    harness = figures["harness_requests"]
    assert harness.get("duplicate: duplicate_upload", 0) >= 1
    assert not {k for k in harness if k.startswith("duplicate:") and not k.endswith("duplicate_upload")
                and not k.endswith("round_closed")}, harness  # a duplicate is never accepted
    assert (figures["server_rss_mb"]["max"] or 0) > 0


@pytest.mark.timeout(700)  # pytest.ini's 300 s would cut the soak's 600 s short
def test_short_soak_with_kills_a_server_restart_and_bad_uploads(tmp_path):
    figures = _soak(tmp_path, "--rounds", "6", "--clients", "4", "--kill-probability", "0.5",
                    "--stale-probability", "1.0", "--duplicate-probability", "1.0", timeout_s=600)
    _check(figures, 6)
    assert figures["harness_requests"].get("stale replay: round_closed", 0) >= 1
    assert (tmp_path / "soak.png").stat().st_size > 1000


@pytest.mark.soak
@pytest.mark.timeout(3700)
def test_fifty_round_soak(tmp_path):
    figures = _soak(tmp_path, "--rounds", "50", "--clients", "4", timeout_s=3600)
    _check(figures, 50)
