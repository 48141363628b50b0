"""Federation server node: the :class:`fedvla.federation.server.FederationServer` (or, with
``federation_mode: skills``, the :class:`fedvla.skills.federation.SkillFederationServer`) behind ROS 2
services.

Services (fedvla_interfaces/srv): ``/federation/join``, ``/federation/heartbeat``,
``/federation/status``, ``/federation/fetch`` (global trunk, by byte range) and
``/federation/upload`` (BEGIN / CHUNK / COMMIT), and ``/federation/secure`` (the small messages
of a secure-aggregation round, when ``secure_aggregation`` is on). Topic ``/federation/round``
(fedvla_interfaces/FederationRound): ``started`` when a round opens (or resumes), ``closed`` once
per aggregated round with its EDA weights, ``finished`` after the last round, ``status`` every
``tick_period_s``·4; transient-local, so a late subscriber gets the recent history. Parameters: the fields of
:class:`fedvla.app.federation.FederationServerSettings`.

Security: requests are HMAC-signed per client (credentials_file). In a full ROS install, run the
server and each robot in its own SROS2 enclave (``ros2 security create_enclave``
``/fedvla/fed_server`` and ``/fedvla/<client_id>``, with a permissions file that grants only the
``/federation/*`` services) so DDS also encrypts and access-controls the transport; the HMAC
stays as the application-level check of who sent an update.
"""
from __future__ import annotations

from rclpy.node import Node

from fedvla import topics
from fedvla.dds import federation_transport_environment
from fedvla.federation.protocol import Reply
from fedvla.federation.rounds import RoundEvent, RoundEventKind, RoundRecord, round_event_fields
from fedvla.app.federation import FederationServerSettings, build_server
from fedvla_interfaces.msg import FederationRound
from fedvla_interfaces.srv import (FederationFetch, FederationHeartbeat, FederationJoin, FederationSecure,
                                  FederationStatus, FederationUpload)
from fedvla_ros.federation_transport import fill_response, fill_status
from fedvla_ros.node_main import main_for
from fedvla_ros.parameters import declare_config
from fedvla_ros.qos import ROUND_EVENTS_QOS, SERVICE_QOS

STATUS_EVERY_TICKS = 4


class FederationServerNode(Node):
    def __init__(self) -> None:
        super().__init__("fed_server")
        self.settings = declare_config(self, FederationServerSettings)
        self.server = build_server(self.settings)
        self.create_service(FederationJoin, topics.FEDERATION_JOIN, self._join, qos_profile=SERVICE_QOS)
        self.create_service(FederationHeartbeat, topics.FEDERATION_HEARTBEAT, self._heartbeat, qos_profile=SERVICE_QOS)
        self.create_service(FederationStatus, topics.FEDERATION_STATUS, self._status, qos_profile=SERVICE_QOS)
        self.create_service(FederationFetch, topics.FEDERATION_FETCH, self._fetch, qos_profile=SERVICE_QOS)
        self.create_service(FederationUpload, topics.FEDERATION_UPLOAD, self._upload, qos_profile=SERVICE_QOS)
        self.create_service(FederationSecure, topics.FEDERATION_SECURE, self._secure, qos_profile=SERVICE_QOS)
        self._round_pub = self.create_publisher(FederationRound, topics.FEDERATION_ROUND, ROUND_EVENTS_QOS)
        self._ticks = 0
        self._announced_finish = self.server.finished
        self.create_timer(self.settings.tick_period_s, self._tick)
        self.get_logger().info(self.server.describe())

    def _join(self, request, response):
        return fill_response(response, self.server.join(request.client_id, request.trunk_hash, request.signature))

    def _heartbeat(self, request, response):
        return fill_response(response, self.server.heartbeat(request.client_id, request.signature))

    def _status(self, request, response):
        return fill_status(response, self.server.status())

    def _fetch(self, request, response):
        reply = self.server.fetch(request.client_id, request.round, request.offset, request.length, request.signature,
                                  request.item)
        response.data = reply.data  # bytes: rclpy copies them as one block
        return fill_response(response, reply)

    def _secure(self, request, response):
        reply = self.server.secure_request(request.op, request.client_id, request.round, request.attempt,
                                           bytes(request.payload), request.signature)
        response.data = reply.data
        return fill_response(response, reply)

    def _upload(self, request, response):
        if request.op == FederationUpload.Request.BEGIN:
            reply = self.server.begin_upload(request.client_id, request.round, request.total_size, request.sha256,
                                             request.signature)
        elif request.op == FederationUpload.Request.CHUNK:
            reply = self.server.upload_chunk(request.upload_id, request.index, memoryview(request.data), request.crc32)
        elif request.op == FederationUpload.Request.COMMIT:
            reply = self.server.commit_upload(request.upload_id)
        else:
            reply = Reply(ok=False, reason="bad_op", detail=f"op {request.op} (BEGIN=0, CHUNK=1, COMMIT=2)")
        return fill_response(response, reply)

    def _publish(self, kind: RoundEventKind, record: RoundRecord | None = None) -> None:
        clients = record.clients if record is not None else self.server.status().accepted
        event = RoundEvent(kind, record.round if record is not None else self.server.round, self.settings.rounds,
                           self.server.finished, self.server.aggregation_label, clients, record)
        msg = FederationRound(**round_event_fields(event))
        msg.header.stamp = self.get_clock().now().to_msg()
        self._round_pub.publish(msg)

    def _tick(self) -> None:
        record = self.server.tick()  # (the core logs the closed round)
        if record is not None:
            self._publish(RoundEventKind.CLOSED, record)
            if not self.server.finished:
                self._publish(RoundEventKind.STARTED)
        self._ticks += 1
        if self._ticks == 1 and not self.server.finished:
            self._publish(RoundEventKind.STARTED)  # the round this server opened or resumed
        if self._ticks % STATUS_EVERY_TICKS == 0:
            self._publish(RoundEventKind.STATUS)
        if self.server.finished and not self._announced_finish:
            self._announced_finish = True
            self._publish(RoundEventKind.FINISHED)
            self.get_logger().info(f"federation finished after {self.settings.rounds} rounds; serving the final "
                                   f"{'skill library' if self.settings.skills else 'trunk'} until stopped")


# UDPv4 only, no shared memory: a killed peer must not stall the federation (issue 19, fedvla.dds).
main = main_for(FederationServerNode, "fed_server", before_init=federation_transport_environment)
