"""docker/compose.yaml (federation: server + two robots): consistent with the nodes, parameter
files and credentials it names. (Running it needs a Docker engine, which CI machines lack.)"""
import re
import shlex
from pathlib import Path

import yaml

from fedvla.config import config_fields
from fedvla.federation.protocol import load_credentials
from fedvla.app.federation import FederationClientSettings, FederationServerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
SETTINGS = {"fed_server": FederationServerSettings, "fed_client": FederationClientSettings}
INSTALLED_CONFIG = "/ws/install/share/fedvla_bringup/config/"


def _expand(text: str) -> str:
    """${VAR:-default} → default, as compose does when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _ros_run(service: dict) -> tuple[str, str, dict[str, str], list[str]]:
    words = shlex.split(_expand(service["command"]))
    assert words[:2] == ["ros2", "run"], words
    params = dict(words[i + 1].split(":=", 1) for i, w in enumerate(words) if w == "-p")
    files = [words[i + 1] for i, w in enumerate(words) if w == "--params-file"]
    return words[2], words[3], params, files


def test_services_run_existing_nodes_with_valid_parameters() -> None:
    entry_points = (REPO / "src" / "fedvla_ros" / "setup.py").read_text()
    state_dirs, client_ids = set(), set()
    for name, service in COMPOSE["services"].items():
        if "tools" in service.get("profiles", []):
            continue
        package, executable, params, files = _ros_run(service)
        assert package == "fedvla_ros" and f'"{executable} = fedvla_ros.' in entry_points, name
        merged = {}
        for file in files:
            assert file.startswith(INSTALLED_CONFIG), file
            source = REPO / "config" / file.removeprefix(INSTALLED_CONFIG)
            merged.update(yaml.safe_load(source.read_text())["/**"]["ros__parameters"])
        merged.update(params)
        unknown = set(merged) - set(config_fields(SETTINGS[executable]))
        assert not unknown, f"{name}: {unknown}"
        credentials = load_credentials(REPO / "config" / merged["credentials_file"])
        if executable == "fed_client":
            assert merged["client_id"] in credentials, name
            client_ids.add(merged["client_id"])
        state_dirs.add(merged["state_dir"])
    assert len(client_ids) == 2 and len(state_dirs) == 3  # no two containers share a state directory


def test_the_report_tool_reads_the_shared_volume() -> None:
    report = COMPOSE["services"]["report"]
    assert report["command"].startswith("fedvla federation report /federation")
    assert "federation:/federation" in COMPOSE["x-fedvla"]["volumes"]
