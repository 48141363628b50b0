"""Federation client node: trains this robot's policy locally and exchanges its trunk with the
``fed_server`` node (:class:`fedvla.federation.client.FederationClient` over ROS 2 services).

The federation loop runs in a worker thread (local training takes minutes); the executor keeps
spinning in the main thread, so service responses arrive while the worker waits for them.
After the last round the node writes ``<state_dir>/final`` (the final global trunk with this
robot's own stems, head and normaliser — a checkpoint for the policy node) and exits when
``exit_when_finished``. Parameters: the fields of
:class:`fedvla.federation.setup.FederationClientSettings`, plus ``exit_when_finished`` and
``service_timeout_s`` (a request unanswered for this long — the server is down or restarting —
is retried from the next poll).
"""
from __future__ import annotations

import threading
from collections import deque

from rclpy.node import Node

from fedvla import topics
from fedvla.config import ConfigError
from fedvla.dds import federation_transport_environment
from fedvla.federation.client import FederationError
from fedvla.federation.protocol import Reply, ServerStatus
from fedvla.federation.setup import FederationClientSettings, build_client
from fedvla.federation.wire import WireError
from fedvla_interfaces.srv import (FederationFetch, FederationHeartbeat, FederationJoin, FederationSecure,
                                  FederationStatus, FederationUpload)
from fedvla_ros.fed_server import OPTIONAL_REPLY_FIELDS, SERVICE_QOS
from fedvla_ros.node_main import NodeExit, main_for
from fedvla_ros.parameters import declare, declare_config


class ServiceTimeout(RuntimeError):
    """The server did not answer (down or restarting)."""


class RosServerApi:
    """The federation server's API over ROS 2 services (called from a non-executor thread)."""

    def __init__(self, node: Node, timeout_s: float = 30.0, chunks_in_flight: int = 4) -> None:
        self.node = node
        self.timeout_s = timeout_s
        self.chunks_in_flight = chunks_in_flight
        self._join = node.create_client(FederationJoin, topics.FEDERATION_JOIN, qos_profile=SERVICE_QOS)
        self._heartbeat = node.create_client(FederationHeartbeat, topics.FEDERATION_HEARTBEAT, qos_profile=SERVICE_QOS)
        self._status = node.create_client(FederationStatus, topics.FEDERATION_STATUS, qos_profile=SERVICE_QOS)
        self._fetch = node.create_client(FederationFetch, topics.FEDERATION_FETCH, qos_profile=SERVICE_QOS)
        self._upload = node.create_client(FederationUpload, topics.FEDERATION_UPLOAD, qos_profile=SERVICE_QOS)
        self._secure = node.create_client(FederationSecure, topics.FEDERATION_SECURE, qos_profile=SERVICE_QOS)

    def _send(self, client, request):
        if not client.wait_for_service(timeout_sec=self.timeout_s):
            raise ServiceTimeout(f"{client.srv_name} is not available: is fed_server running?")
        return client.call_async(request)

    def _wait(self, future, name: str):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(self.timeout_s):
            future.cancel()
            raise ServiceTimeout(f"{name}: no answer in {self.timeout_s:g} s")
        return future.result()

    def _call(self, client, request):
        return self._wait(self._send(client, request), client.srv_name)

    @staticmethod
    def _reply(response) -> Reply:
        reply = Reply(ok=response.ok, reason=response.reason, detail=response.detail, round=response.round)
        for name in OPTIONAL_REPLY_FIELDS:
            if hasattr(response, name):
                setattr(reply, name, getattr(response, name))
        if hasattr(response, "data"):
            reply.data = bytes(response.data)
        return reply

    def join(self, client_id: str, trunk_hash: str, signature: str) -> Reply:
        return self._reply(self._call(self._join, FederationJoin.Request(
            client_id=client_id, trunk_hash=trunk_hash, signature=signature)))

    def heartbeat(self, client_id: str, signature: str) -> Reply:
        return self._reply(self._call(self._heartbeat, FederationHeartbeat.Request(
            client_id=client_id, signature=signature)))

    def status(self) -> ServerStatus:
        r = self._call(self._status, FederationStatus.Request())
        return ServerStatus(round=r.round, rounds=r.rounds, finished=r.finished, accepted=list(r.accepted),
                            live_clients=list(r.live_clients), joined=list(r.joined), global_size=r.global_size,
                            global_sha256=r.global_sha256, chunk_size=r.chunk_size, phase=r.phase, attempt=r.attempt)

    def fetch(self, client_id: str, round_index: int, offset: int, length: int, signature: str) -> Reply:
        return self._reply(self._call(self._fetch, FederationFetch.Request(
            client_id=client_id, round=round_index, offset=offset, length=length, signature=signature)))

    def begin_upload(self, client_id: str, round_index: int, size: int, sha256: str, signature: str) -> Reply:
        return self._reply(self._call(self._upload, FederationUpload.Request(
            op=FederationUpload.Request.BEGIN, client_id=client_id, round=round_index, total_size=size,
            sha256=sha256, signature=signature)))

    def _chunk_request(self, upload_id: str, index: int, data: bytes, crc32: int):
        return FederationUpload.Request(op=FederationUpload.Request.CHUNK, upload_id=upload_id, index=index,
                                        data=bytes(data), crc32=crc32)

    def upload_chunk(self, upload_id: str, index: int, data: bytes, crc32: int) -> Reply:
        return self._reply(self._call(self._upload, self._chunk_request(upload_id, index, data, crc32)))

    def upload_chunks(self, upload_id: str, chunks) -> list[Reply]:
        """Several chunks in flight at once (the server accepts them in any order)."""
        pending: deque = deque()
        replies: list[Reply] = []
        for index, data, crc32 in chunks:
            pending.append(self._send(self._upload, self._chunk_request(upload_id, index, data, crc32)))
            if len(pending) >= self.chunks_in_flight:
                replies.append(self._reply(self._wait(pending.popleft(), self._upload.srv_name)))
        while pending:
            replies.append(self._reply(self._wait(pending.popleft(), self._upload.srv_name)))
        return replies

    def secure_request(self, op: str, client_id: str, round_index: int, attempt: int, payload: bytes,
                       signature: str) -> Reply:
        return self._reply(self._call(self._secure, FederationSecure.Request(
            op=op, client_id=client_id, round=round_index, attempt=attempt, payload=payload, signature=signature)))

    def commit_upload(self, upload_id: str) -> Reply:
        return self._reply(self._call(self._upload, FederationUpload.Request(
            op=FederationUpload.Request.COMMIT, upload_id=upload_id)))


class FederationClientNode(Node):
    def __init__(self) -> None:
        super().__init__("fed_client")
        self.settings = declare_config(self, FederationClientSettings)
        self.exit_when_finished = declare(self, "exit_when_finished", True,
                                          "stop the node once the federation has finished")
        timeout_s = declare(self, "service_timeout_s", 30.0, "how long to wait for one answer of fed_server")
        if timeout_s <= 0:
            raise ConfigError("service_timeout_s", f"must be positive, got {timeout_s}", "seconds > 0")
        self.api = RosServerApi(self, timeout_s=float(timeout_s))
        self.client = build_client(self.settings, self.api)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._failure: str | None = None
        self._worker = threading.Thread(target=self._run, name="federation", daemon=True)
        self._worker.start()
        self.create_timer(0.2, self._check_done)
        self.get_logger().info(f"{self.settings.client_id}: {len(self.client.dataset)} local samples, "
                               f"{self.settings.local_epochs} epoch(s) per round, uploads in "
                               f"{self.settings.upload_dtype.value}, state in {self.settings.state_dir}")

    def _run(self) -> None:
        log = self.get_logger()
        while not self._stop.is_set():
            try:
                report = self.client.step()
                if report is not None:
                    log.info(f"round {report.round}: loss {report.train.epoch_losses[-1]:.4f}, uploaded "
                             f"{report.upload_bytes / 1e6:.2f} MB, fetched {report.fetch_bytes / 1e6:.2f} MB "
                             f"in {report.seconds:.1f} s")
                    continue
                if self.client.finished():
                    path = self.client.save_final_checkpoint()
                    log.info(f"federation finished: final checkpoint {path}")
                    self._done.set()
                    return
            except ServiceTimeout as err:
                log.warning(f"{err}; retrying")
            except (FederationError, WireError, ConfigError) as err:
                self._failure = str(err)
                self._done.set()
                return
            self._stop.wait(self.settings.poll_period_s)

    def _check_done(self) -> None:
        if self._failure is not None:
            raise NodeExit(f"federation stopped: {self._failure}", status=1)
        if self._done.is_set() and self.exit_when_finished:
            raise NodeExit("federation finished", status=0)

    def destroy_node(self) -> None:
        self._stop.set()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


# UDPv4 only, no shared memory: a killed peer must not stall the federation (issue 19, fedvla.dds).
main = main_for(FederationClientNode, "fed_client", before_init=federation_transport_environment)
