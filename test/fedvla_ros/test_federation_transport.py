"""Both halves of the federation's service conversion: a core Reply or ServerStatus filled into a
service response comes back unchanged."""
import pytest

pytest.importorskip("rclpy")
from fedvla.federation.protocol import Reply, ServerStatus  # noqa: E402
from fedvla_interfaces.srv import FederationFetch, FederationStatus, FederationUpload  # noqa: E402
from fedvla_ros.federation_transport import (fill_response, fill_status, reply_from_response,  # noqa: E402
                                             status_from_response)

pytestmark = pytest.mark.ros


def test_replies_round_trip_through_service_responses() -> None:
    begun = Reply(ok=True, round=3, upload_id="ab12", chunk_size=4096, num_chunks=7)
    assert reply_from_response(fill_response(FederationUpload.Response(), begun)) == begun
    refused = Reply(ok=False, reason="round_closed", detail="round 2 is closed", round=3)
    assert reply_from_response(fill_response(FederationUpload.Response(), refused)) == refused
    fetched = Reply(ok=True, round=3, data=b"\x00\x01trunk", total_size=1000, sha256="f" * 64)
    response = fill_response(FederationFetch.Response(), fetched)
    response.data = fetched.data  # the bytes travel beside the reply fields (fed_server sets them)
    assert reply_from_response(response) == fetched


def test_status_round_trips_through_its_service_response() -> None:
    status = ServerStatus(round=4, rounds=10, finished=False, accepted=["robot_a"], live_clients=["robot_a", "robot_b"],
                          joined=["robot_a", "robot_b", "robot_c"], global_size=123456, global_sha256="e" * 64,
                          chunk_size=65536, phase="masked", attempt=1)
    assert status_from_response(fill_status(FederationStatus.Response(), status)) == status
