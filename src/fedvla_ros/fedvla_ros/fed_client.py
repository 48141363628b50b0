"""Federation client node: trains this robot's policy locally and exchanges its trunk with the
``fed_server`` node (:class:`fedvla.federation.client.FederationClient` over ROS 2 services); with
``federation_mode: skills``, fine-tunes its routed skills on the frozen base instead
(:class:`fedvla.skills.federation.SkillFederationClient`) and writes ``<state_dir>/final`` with the
router and its skills.

The federation loop runs in a worker thread (local training takes minutes); the executor keeps
spinning in the main thread, so service responses arrive while the worker waits for them.
After the last round the node writes ``<state_dir>/final`` (the final global trunk with this
robot's own stems, head and normaliser — a checkpoint for the policy node) and exits when
``exit_when_finished``. Parameters: the fields of
:class:`fedvla.app.federation.FederationClientSettings`, plus ``exit_when_finished`` and
``service_timeout_s`` (a request unanswered for this long — the server is down or restarting —
is retried from the next poll).
"""
from __future__ import annotations

import threading

from rclpy.node import Node

from fedvla.config import ConfigError
from fedvla.dds import federation_transport_environment
from fedvla.federation.round_client import FederationError
from fedvla.app.federation import FederationClientSettings, build_client
from fedvla.federation.wire import WireError
from fedvla_ros.federation_transport import RosServerApi, ServiceTimeout
from fedvla_ros.node_main import NodeExit, main_for
from fedvla_ros.parameters import declare, declare_config


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
                               f"{self.settings.local_epochs} epoch(s) per round, "
                               f"{'skill deltas' if self.settings.skills else 'uploads in ' + self.settings.upload_dtype.value}"
                               f", state in {self.settings.state_dir}")

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
