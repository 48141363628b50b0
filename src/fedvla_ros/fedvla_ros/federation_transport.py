"""The federation protocol over ROS 2 services, both halves in one place: the server side fills
service responses from the core's :class:`Reply` and :class:`ServerStatus`; the client side
(:class:`RosServerApi`, used by ``fed_client``, ``fedvla soak`` and ``fedvla bench transfer``)
sends requests and turns responses back into them.
"""
from __future__ import annotations

import threading
from collections import deque

from rclpy.node import Node

from fedvla import topics
from fedvla.federation.protocol import Reply, ServerStatus
from fedvla_interfaces.srv import (FederationFetch, FederationHeartbeat, FederationJoin, FederationSecure,
                                  FederationStatus, FederationUpload)
from fedvla_ros.qos import SERVICE_QOS

# The :class:`Reply` fields some federation service responses carry (all carry ok, reason,
# detail, round); fed_client reads them back with the same list.
OPTIONAL_REPLY_FIELDS = ("upload_id", "chunk_size", "num_chunks", "total_size", "sha256")


def fill_response(response, reply: Reply):
    """Copy the fields a service response has from a core :class:`Reply`."""
    response.ok, response.reason, response.detail, response.round = reply.ok, reply.reason, reply.detail, reply.round
    for name in OPTIONAL_REPLY_FIELDS:
        if hasattr(response, name):
            setattr(response, name, getattr(reply, name))
    return response


def reply_from_response(response) -> Reply:
    """The core :class:`Reply` of a service response (the inverse of :func:`fill_response`)."""
    reply = Reply(ok=response.ok, reason=response.reason, detail=response.detail, round=response.round)
    for name in OPTIONAL_REPLY_FIELDS:
        if hasattr(response, name):
            setattr(reply, name, getattr(response, name))
    if hasattr(response, "data"):
        reply.data = bytes(response.data)
    return reply


_STATUS_FIELDS = ("round", "rounds", "finished", "accepted", "live_clients", "joined", "global_size", "global_sha256",
                  "chunk_size", "phase", "attempt")


def fill_status(response, status: ServerStatus):
    for name in _STATUS_FIELDS:
        setattr(response, name, getattr(status, name))
    return response


def status_from_response(response) -> ServerStatus:
    values = {name: getattr(response, name) for name in _STATUS_FIELDS}
    return ServerStatus(**{k: list(v) if k in ("accepted", "live_clients", "joined") else v for k, v in values.items()})


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

    def close(self) -> None:
        """Destroy this API's service clients (a caller that starts over with fresh ones)."""
        for client in (self._join, self._heartbeat, self._status, self._fetch, self._upload, self._secure):
            self.node.destroy_client(client)

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

    _reply = staticmethod(reply_from_response)

    def join(self, client_id: str, trunk_hash: str, signature: str) -> Reply:
        return self._reply(self._call(self._join, FederationJoin.Request(
            client_id=client_id, trunk_hash=trunk_hash, signature=signature)))

    def heartbeat(self, client_id: str, signature: str) -> Reply:
        return self._reply(self._call(self._heartbeat, FederationHeartbeat.Request(
            client_id=client_id, signature=signature)))

    def status(self) -> ServerStatus:
        return status_from_response(self._call(self._status, FederationStatus.Request()))

    def fetch(self, client_id: str, round_index: int, offset: int, length: int, signature: str,
              item: str = "") -> Reply:
        return self._reply(self._call(self._fetch, FederationFetch.Request(
            client_id=client_id, round=round_index, offset=offset, length=length, signature=signature, item=item)))

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
