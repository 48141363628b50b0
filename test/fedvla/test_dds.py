"""fedvla.dds: the federation's Fast DDS transport (UDPv4 only, no shared memory; issue 19)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from fedvla import dds

NS = {"d": "http://www.eprosima.com"}


def _apply(**env: str) -> tuple[dds.TransportChoice, dict]:
    env = dict(env)
    return dds.federation_transport_environment(env), env


def test_localhost_gets_the_udp_localhost_profile_and_a_range_rmw_leaves_alone():
    choice, env = _apply(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID="7")
    assert env[dds.PROFILE_ENV] == str(dds.profile_path(localhost=True))
    assert env[dds.RANGE_ENV] == "SYSTEM_DEFAULT"  # rmw_fastrtps would add SHM back under LOCALHOST
    assert env["ROS_DOMAIN_ID"] == "7" and not choice.warning
    assert "UDPv4 only" in choice.summary and "localhost" in choice.summary


def test_the_deprecated_localhost_only_flag_counts_as_localhost_and_is_removed():
    _, env = _apply(ROS_LOCALHOST_ONLY="1")
    assert env[dds.PROFILE_ENV].endswith(dds.FEDERATION.localhost_profile.split("/")[-1])
    assert dds.LOCALHOST_ONLY_ENV not in env and env[dds.RANGE_ENV] == "SYSTEM_DEFAULT"


@pytest.mark.parametrize("discovery", [None, "SUBNET", "SYSTEM_DEFAULT", "subnet"])
def test_networks_get_the_udp_profile_with_their_discovery_unchanged(discovery):
    given = {} if discovery is None else {dds.RANGE_ENV: discovery}
    choice, env = _apply(**given)
    assert env[dds.PROFILE_ENV] == str(dds.profile_path(localhost=False))
    assert env.get(dds.RANGE_ENV) == given.get(dds.RANGE_ENV)
    assert choice.changed == {dds.PROFILE_ENV: env[dds.PROFILE_ENV]}


def test_a_users_own_profile_and_other_rmws_are_left_alone():
    for given in ({dds.PROFILE_ENV: "/etc/my_fastdds.xml", dds.RANGE_ENV: "LOCALHOST"},
                  {dds.RMW_ENV: "rmw_cyclonedds_cpp", dds.RANGE_ENV: "LOCALHOST"}):
        choice, env = _apply(**given)
        assert env == given and choice.profile is None and choice.changed == {}
    choice, env = _apply(**{dds.RMW_ENV: "rmw_fastrtps_cpp"})
    assert dds.PROFILE_ENV in env


def test_a_child_process_recognises_the_profile_its_parent_chose():
    _, env = _apply(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    choice, child = _apply(**env)
    assert child == env and choice.changed == {} and "UDPv4 only" in choice.summary and "parent" in choice.summary


def test_localhost_with_static_peers_cannot_be_translated_and_says_so():
    given = {dds.RANGE_ENV: "LOCALHOST", dds.STATIC_PEERS_ENV: "10.0.0.2"}
    choice, env = _apply(**given)
    assert env == given and choice.warning and "shared-memory" in choice.summary


def test_discovery_off_is_left_alone():
    choice, env = _apply(**{dds.RANGE_ENV: "OFF"})
    assert env == {dds.RANGE_ENV: "OFF"} and choice.profile is None


@pytest.mark.parametrize("localhost", [False, True])
def test_the_profiles_use_udpv4_only(localhost):
    root = ET.parse(dds.profile_path(localhost)).getroot()
    kinds = [t.text for t in root.findall(".//d:transport_descriptor/d:type", NS)]
    assert kinds == ["UDPv4"]
    participants = root.findall(".//d:participant", NS)
    assert len(participants) == 1 and participants[0].get("is_default_profile") == "true"
    rtps = participants[0].find("d:rtps", NS)
    assert rtps.find("d:useBuiltinTransports", NS).text == "false"  # the builtin ones include SHM
    used = [t.text for t in rtps.findall("d:userTransports/d:transport_id", NS)]
    assert used == [t.text for t in root.findall(".//d:transport_descriptor/d:transport_id", NS)]
    peers = rtps.findall("d:builtin/d:initialPeersList/d:locator/d:udpv4/d:address", NS)
    assert [p.text for p in peers] == (["127.0.0.1"] if localhost else [])


@pytest.mark.parametrize("localhost", [False, True])
def test_the_robot_profiles_carry_a_camera_image_in_one_shared_memory_message(localhost):
    root = ET.parse(dds.profile_path(localhost, dds.ROBOT)).getroot()
    shm, udp = root.findall(".//d:transport_descriptor", NS)
    assert shm.find("d:type", NS).text == "SHM" and udp.find("d:type", NS).text == "UDPv4"
    image = 1280 * 720 * 3  # the D435i's largest colour stream, rgb8
    assert int(shm.find("d:maxMessageSize", NS).text) >= image
    assert int(shm.find("d:segment_size", NS).text) >= 4 * image  # several images in flight
    rtps = root.find(".//d:participant/d:rtps", NS)
    assert rtps.find("d:useBuiltinTransports", NS).text == "false"
    peers = rtps.findall("d:builtin/d:initialPeersList/d:locator/d:udpv4/d:address", NS)
    assert [p.text for p in peers] == (["127.0.0.1"] if localhost else [])


@pytest.mark.parametrize("discovery", ["LOCALHOST", "SUBNET"])
def test_a_child_of_the_other_role_takes_its_own_profile_for_the_parents_discovery(discovery):
    localhost = discovery == "LOCALHOST"
    parent = {dds.RANGE_ENV: discovery}
    dds.robot_transport_environment(parent)  # a launch of robot nodes ...
    assert parent[dds.PROFILE_ENV] == str(dds.profile_path(localhost, dds.ROBOT))
    child = dict(parent)
    choice = dds.federation_transport_environment(child)  # ... that starts a federation client
    assert child[dds.PROFILE_ENV] == str(dds.profile_path(localhost, dds.FEDERATION))
    assert child[dds.RANGE_ENV] == parent[dds.RANGE_ENV] and "UDPv4 only" in choice.summary
    grandchild = dict(child)
    dds.robot_transport_environment(grandchild)
    assert grandchild == parent


def test_robot_nodes_keep_rmws_transport_with_static_peers_but_it_is_not_the_federations_stall():
    given = {dds.RANGE_ENV: "LOCALHOST", dds.STATIC_PEERS_ENV: "10.0.0.2"}
    choice = dds.robot_transport_environment(dict(given))
    assert choice.profile is None and not choice.warning and "512 KiB" in choice.summary
