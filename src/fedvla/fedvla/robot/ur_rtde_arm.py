"""A UR arm (CB3 or e-series) through ur_rtde: RTDE receive for state, RTDE control for servoJ, the
dashboard server for unlocking a protective stop, and a URScript secondary program for the gripper.

Choices, and why:

* Reconnecting recreates the interfaces instead of calling ur_rtde's ``reconnect()``: after a
  dropped link the control interface's own automatic reconnect can crash the process when the
  robot is reachable again, and its state getters keep returning the last values received. So
  every call first checks ``isConnected()`` on both interfaces and raises :class:`BackendError`
  when the link is gone; the runtime then reconnects on its own schedule, resynchronised on the
  measured joints (no stale setpoint).
* The gripper is a 1-DoF gripper on a digital output (``gripper_output``, e.g. ``tool:0``): the
  simplest wiring of an electric or pneumatic parallel gripper, and the one every UR has. A
  gripper with its own protocol (Robotiq over its URCap socket) needs its own backend method.
  The output is set by a one-line secondary program (``sec ...: set_tool_digital_out(..) end``)
  sent to the script port, which runs beside our control script without stopping it. Not
  ur_rtde's RTDEIOInterface: it does not notice a dropped link, and destroying it afterwards
  aborts the whole process (ur_rtde 1.6.5, reproduced against the test controller).
* The RTDE watchdog (``watchdog_frequency_hz``) makes the controller stop our control script when
  no kick arrives for ``1 / frequency`` seconds, so a hung driver cannot leave the arm servoing;
  the runtime kicks it with every setpoint and reports the stopped script as a fault.
* Recovery (``resume``) unlocks a protective stop through the dashboard server and re-uploads the
  control script; emergency and safeguard stops have to be released on the robot first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import time

import numpy as np

from fedvla.config import ConfigError, require
from fedvla.robot.backends import ArmBackend, ArmState, BackendError, CommandRefused, SafetyStatus, ServoSettings
from fedvla.scheduling import threads_start_below_caller

log = logging.getLogger("fedvla.robot.ur_rtde")

# UR safety modes (RTDE ``safety_mode``) as the runtime sees them.
_SAFETY_MODES = {
    1: SafetyStatus.NORMAL, 2: SafetyStatus.NORMAL,  # NORMAL, REDUCED (slower, still normal operation)
    3: SafetyStatus.PROTECTIVE_STOP,
    5: SafetyStatus.SAFEGUARD_STOP, 12: SafetyStatus.SAFEGUARD_STOP, 13: SafetyStatus.SAFEGUARD_STOP,
    6: SafetyStatus.EMERGENCY_STOP, 7: SafetyStatus.EMERGENCY_STOP,  # system / robot e-stop
}  # anything else (RECOVERY, VIOLATION, FAULT, ...) is FAULT
_ROBOT_MODE_RUNNING = 7
GRIPPER_SETTLE_S = 0.2  # a gripper command shows in the digital outputs within a few controller cycles
_GRIPPER_BANKS = {"standard": (0, 8), "configurable": (8, 8), "tool": (16, 2)}  # first bit, count


@dataclasses.dataclass(kw_only=True)
class UrRtdeConfig:
    robot_ip: str
    control_frequency_hz: float = 500.0  # the controller's cycle: 500 on an e-series, 125 on a CB3
    gripper_output: str = "tool:0"  # "<standard|configurable|tool>:<index>", or "none"
    gripper_closed_level: bool = True  # the output level that closes the gripper
    watchdog_frequency_hz: float = 10.0  # minimum kick rate; 0 disables the RTDE watchdog
    upper_range_registers: bool = False  # use input registers 24-47 (when a URCap/PLC owns 0-23)
    script_port: int = 30003  # where URScript is accepted (the gripper's secondary programs)
    unlock_timeout_s: float = 2.0  # how long resume() waits for the unlock / the script to start

    def __post_init__(self) -> None:
        require(bool(self.robot_ip.strip()), "robot_ip", "is empty", "the robot's address, e.g. 192.168.1.10")
        require(0 < self.control_frequency_hz <= 500, "control_frequency_hz",
                f"{self.control_frequency_hz} Hz is not a UR controller rate", "500 (e-series) or 125 (CB3)")
        require(self.watchdog_frequency_hz >= 0, "watchdog_frequency_hz",
                f"{self.watchdog_frequency_hz} is negative", "a rate in Hz, or 0 to disable")
        self.gripper_bit  # validates

    @property
    def gripper_bit(self) -> int | None:
        """The gripper's bit in RTDE's digital output word (None: no gripper)."""
        if self.gripper_output == "none":
            return None
        bank, _, index = self.gripper_output.partition(":")
        if bank not in _GRIPPER_BANKS or not index.isdigit() or int(index) >= _GRIPPER_BANKS[bank][1]:
            raise ConfigError("gripper_output", f"{self.gripper_output!r} is not a digital output",
                              "'standard:0'..'standard:7', 'configurable:0'..'configurable:7', 'tool:0', "
                              "'tool:1' or 'none'")
        return _GRIPPER_BANKS[bank][0] + int(index)


def _import_ur_rtde():
    try:
        import dashboard_client
        import rtde_control
        import rtde_receive
    except ImportError as err:
        raise BackendError(f"the ur_rtde backend needs the ur-rtde package ({err}): pip install ur-rtde") from None
    return rtde_receive, rtde_control, dashboard_client


class UrRtdeArm(ArmBackend):
    def __init__(self, config: UrRtdeConfig) -> None:
        self.config = config
        self.period_s = 1.0 / config.control_frequency_hz
        self._rtde_receive, self._rtde_control, self._dashboard = _import_ur_rtde()
        self._receive = self._control = None
        self._gripper_commanded: bool | None = None
        self._gripper_sent_s = 0.0

    # Connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        self.disconnect()
        config, frequency = self.config, self.config.control_frequency_hz
        try:
            with threads_start_below_caller():
                self._receive = self._rtde_receive.RTDEReceiveInterface(config.robot_ip, frequency)
            self._open_control()
        except RuntimeError as err:
            self.disconnect()
            raise BackendError(f"cannot connect to the UR controller at {config.robot_ip}: {err}. Check that the "
                               "robot is on, reachable, in remote control (e-series) and that no other "
                               "program holds its RTDE input registers") from None
        self._gripper_commanded = None
        log.info("connected to the UR controller at %s (%.0f Hz)", config.robot_ip, frequency)

    def _open_control(self) -> None:
        """A new control interface: it clears the command register, uploads the control script and
        waits until it runs (ur_rtde's constructor); then the RTDE watchdog."""
        config = self.config
        flags = self._rtde_control.RTDEControlInterface.Flags
        control_flags = flags.FLAG_UPLOAD_SCRIPT | (flags.FLAG_UPPER_RANGE_REGISTERS if config.upper_range_registers else 0)
        self._control = None  # (the old one's destructor closes its sockets first)
        deadline = time.monotonic() + config.unlock_timeout_s
        while True:
            try:
                with threads_start_below_caller():
                    self._control = self._rtde_control.RTDEControlInterface(
                        config.robot_ip, config.control_frequency_hz, int(control_flags))
                break
            except RuntimeError as err:
                # The controller frees the old session's input registers once it has seen that
                # connection close; a busy controller (or twin) takes a moment.
                if "already in use" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if config.watchdog_frequency_hz > 0 and not self._control.setWatchdog(config.watchdog_frequency_hz):
            raise RuntimeError("the controller did not accept the RTDE watchdog")

    def disconnect(self) -> None:
        # Dropping the objects closes their sockets (ur_rtde's destructors); never reconnect() them.
        self._receive = self._control = None

    @property
    def is_connected(self) -> bool:
        return (self._receive is not None and self._control is not None
                and self._receive.isConnected() and self._control.isConnected())

    def close(self) -> None:
        """Stop servoing and end the control script, then disconnect (the driver's shutdown)."""
        if self.is_connected:
            try:
                self._control.servoStop()
                self._control.stopScript()
            except RuntimeError as err:
                log.warning("stopping the control script failed: %s", err)
        self.disconnect()

    # State -----------------------------------------------------------------------------------------
    def read(self) -> ArmState:
        self._require_connected()
        receive = self._receive
        bit = self.config.gripper_bit
        with self._link():
            gripper = (bool(receive.getDigitalOutState(bit)) == self.config.gripper_closed_level) if bit is not None else False
            if bit is not None and gripper != self._gripper_commanded \
                    and time.monotonic() - self._gripper_sent_s > GRIPPER_SETTLE_S:
                self._gripper_commanded = None  # changed behind our back (pendant, cell reset): command it again
            return ArmState(
                q=np.asarray(receive.getActualQ(), dtype=np.float64),
                qd=np.asarray(receive.getActualQd(), dtype=np.float64),
                safety=_SAFETY_MODES.get(int(receive.getSafetyMode()), SafetyStatus.FAULT),
                gripper_closed=gripper,
                program_running=bool(self._control.isProgramRunning()) and receive.getRobotMode() == _ROBOT_MODE_RUNNING)

    # Commands -----------------------------------------------------------------------------------------
    def servo_j(self, q: np.ndarray, settings: ServoSettings) -> None:
        self._require_connected()
        with self._link():
            accepted = self._control.servoJ([float(v) for v in q], settings.servo_speed, settings.servo_acceleration,
                                            self.period_s, settings.lookahead_time_s, settings.gain)
        if not accepted:
            raise CommandRefused("the UR controller refused servoJ (its control script is not running)")

    def servo_stop(self, deceleration: float) -> None:
        self._require_connected()
        with self._link():
            accepted = self._control.servoStop(float(deceleration))
        if not accepted:
            raise CommandRefused("the UR controller refused servoStop (its control script is not running)")

    def set_gripper(self, closed: bool) -> None:
        bit = self.config.gripper_bit
        if bit is None or closed == self._gripper_commanded:
            return
        self._require_connected()
        level = bool(closed) == self.config.gripper_closed_level
        bank, _, index = self.config.gripper_output.partition(":")
        program = f"sec fedvla_gripper():\n  set_{bank}_digital_out({int(index)}, {level})\nend\n"
        try:
            with socket.create_connection((self.config.robot_ip, self.config.script_port), timeout=0.1) as link:
                link.sendall(program.encode())
        except OSError as err:
            raise BackendError(f"cannot send the gripper command to {self.config.robot_ip}:"
                               f"{self.config.script_port}: {err}") from None
        self._gripper_commanded = bool(closed)
        self._gripper_sent_s = time.monotonic()

    def kick_watchdog(self) -> None:
        if self.config.watchdog_frequency_hz > 0 and self.is_connected:
            with self._link():
                self._control.kickWatchdog()

    def resume(self) -> None:
        self._require_connected()
        safety = _SAFETY_MODES.get(int(self._receive.getSafetyMode()), SafetyStatus.FAULT)
        if safety is SafetyStatus.PROTECTIVE_STOP:
            reply = self._dashboard_command("unlockProtectiveStop")
            if not self._wait(lambda: self._receive.getSafetyMode() in (1, 2)):
                raise BackendError(f"the protective stop is still on (dashboard: {reply!r}); the controller "
                                   "allows unlocking 5 s after the stop: inspect the cause, then recover again")
        elif safety is not SafetyStatus.NORMAL:
            raise BackendError(f"the robot is in {safety.value}: release it on the robot first")
        if self._receive.getRobotMode() != _ROBOT_MODE_RUNNING:
            raise BackendError("the arm is not powered on with brakes released: do that on the teach pendant")
        if not self._control.isProgramRunning():
            # Not reuploadScript(): it leaves the last command in the input registers, and the
            # restarted script runs it: a stale servoJ target, so after a cell reset the arm drove
            # back to where it had been stopped (into the new layout). A new control interface
            # clears the command register before it uploads the script.
            try:
                self._open_control()
            except RuntimeError as err:
                self.disconnect()
                raise BackendError(f"the control script did not restart ({err}): check the teach pendant for a "
                                   "popup") from None
        self._gripper_commanded = None
        log.info("UR controller resumed")

    def init_period(self):
        """ur_rtde's initPeriod (the controller's clock) while connected, the monotonic clock otherwise."""
        return self._control.initPeriod() if self.is_connected else super().init_period()

    def wait_period(self, start) -> None:
        if isinstance(start, float):
            super().wait_period(start)
        elif self._control is not None:
            self._control.waitPeriod(start)

    # Internals -------------------------------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self.is_connected:
            raise BackendError(f"the connection to the UR controller at {self.config.robot_ip} is gone")

    @contextlib.contextmanager
    def _link(self):
        """ur_rtde raises RuntimeError when the link drops during a call (after isConnected() said
        yes; it may even try, and fail, to reconnect on its own): that is a lost connection."""
        try:
            yield
        except RuntimeError as err:
            raise BackendError(f"the connection to the UR controller at {self.config.robot_ip} is gone: {err}") from None

    def _dashboard_command(self, method: str) -> str:
        dashboard = self._dashboard.DashboardClient(self.config.robot_ip)
        try:
            dashboard.connect()
            getattr(dashboard, method)()
            return dashboard.safetystatus()
        except RuntimeError as err:
            raise BackendError(f"the UR dashboard server at {self.config.robot_ip} refused {method}: {err}") from None
        finally:
            dashboard.disconnect()

    def _wait(self, predicate) -> bool:
        deadline = time.monotonic() + self.config.unlock_timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())
