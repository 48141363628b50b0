"""The federation soak (fedvla_ros/tools/federation_soak.py): fed_server and four fed_client processes with
clients killed and restarted, one server restart, duplicated, stale and delayed uploads; every
update a client saw acknowledged must be in the persisted state, and the federation must stay live
(no round open past round_timeout_s + margin, no client with a long run of service timeouts).

The default run has a short version that kills a client in every round with quick restarts: with
Fast DDS' shared-memory transport that stalled the federation (issue 19; see fedvla.dds), so it
guards the UDPv4-only transport. ``test/run -m soak`` runs 50 rounds and the large-chunk and
secure versions."""
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
    assert figures["liveness"]["ok"], figures["liveness"]["problems"]
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


# A client killed in every round, restarted 1 s later (seeded: the same plan each run). With the
# shared-memory transport (the fix bypassed) this 20-round run stalled in 2 of 3 runs (rounds 10
# and 17; a 12-round version in 1 of 3); with UDPv4 only it passes (results/soak/README.md).
CLOSE_KILLS = ("--kill-probability", "1.0", "--restart-delay-s", "1.0", "--round-timeout-s", "30",
               "--liveness-margin-s", "20", "--seed", "0")


@pytest.mark.timeout(700)  # pytest.ini's 300 s would cut the soak's 600 s short
def test_short_soak_with_kills_every_round_a_server_restart_and_bad_uploads(tmp_path):
    figures = _soak(tmp_path, "--rounds", "20", "--clients", "4", *CLOSE_KILLS, "--stale-probability", "1.0",
                    "--duplicate-probability", "1.0", timeout_s=600)
    _check(figures, 20)
    # one in each of rounds 1..19 the harness saw open (deterministic plan). The harness reads the
    # rounds from the server's persisted state: when it read them from its status calls, a CI run
    # missed rounds 11-15 (its calls went unanswered for 6.5 s after the server restart, and rounds
    # without a kill closed in 0.6 s); a round can still open and close between two reads.
    observed = [r for r in range(1, 20) if r not in figures["unobserved_rounds"]]
    assert figures["client_kills"] == len(observed) >= 15, (figures["unobserved_rounds"], figures["harness_status"],
                                                           figures["kills"])
    assert figures["harness_requests"].get("stale replay: round_closed", 0) >= 1
    assert "UDPv4 only" in figures["dds"]
    assert max(figures["max_consecutive_timeouts"].values(), default=0) <= 10
    assert (tmp_path / "soak.png").stat().st_size > 1000


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_fifty_round_soak(tmp_path):
    figures = _soak(tmp_path, "--rounds", "50", "--clients", "4", timeout_s=3500)
    _check(figures, 50)


@pytest.mark.soak
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("chunk_mib", [1, 16])
def test_soak_with_kills_against_large_upload_chunks(tmp_path, chunk_mib):
    """HPT-Small-sized updates in 1 MiB and 16 MiB chunks (what bench transfer sends), kills every round."""
    figures = _soak(tmp_path, "--rounds", "8", "--clients", "4", *CLOSE_KILLS, "--model-config",
                    "model/hpt_small.yaml", "--chunk-size", str(chunk_mib << 20),
                    "--round-timeout-s", "120", "--liveness-margin-s", "60",  # HPT-Small trains for tens of s
                    "--service-timeout-s", "30",  # fed_client's default: a 16 MiB chunk may take seconds
                    timeout_s=2300)
    _check(figures, 8)


@pytest.mark.soak
@pytest.mark.timeout(2400)
def test_secure_soak_with_kills_every_round(tmp_path):
    figures = _soak(tmp_path, "--rounds", "12", "--clients", "4", "--secure", *CLOSE_KILLS, timeout_s=2300)
    assert figures["liveness"]["ok"], figures["liveness"]["problems"]
    assert figures["finished"] and figures["rounds_completed"] == 12
    assert figures["acknowledged_missing_from_state"] == []
