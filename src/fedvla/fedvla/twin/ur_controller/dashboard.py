"""The dashboard server (port 29999): UR's text protocol, one command per line."""
from __future__ import annotations

import time
from typing import Any

from fedvla.twin.ur_controller.protocol import RobotMode, RuntimeState, SafetyMode



def serve(core: Any, conn: Any) -> None:
    """Answer one dashboard client until it leaves (``core``: the ControllerCore, untyped here
    because it imports this module)."""
    conn.send(b"Connected: Universal Robots Dashboard Server\n")
    for line in conn.lines():
        command = line.strip()
        if not command:
            continue
        with core.lock:
            core.dashboard_commands.append(command)
        answer, close_after = reply(core, command)
        core._log("dashboard", f"{command!r} -> {answer!r}")
        conn.send(answer.encode() + b"\n")
        if close_after:
            conn.close()
            return


def reply(core: Any, command: str) -> tuple[str, bool]:
    c = command.lower()
    major, minor, bugfix = core.urcontrol_version
    with core.lock:
        s = core.state
        if c == "polyscopeversion":
            return f"URSoftware {major}.{minor}.{bugfix}.{core.build_number} (Jan 01 2024)", False
        if c == "version":
            return f"{major}.{minor}.{bugfix}.{core.build_number}", False
        if c == "robotmode":
            return f"Robotmode: {RobotMode(s.robot_mode).name}", False
        if c == "safetymode":
            return f"Safetymode: {SafetyMode(s.safety_mode).name}", False
        if c == "safetystatus":
            return f"Safetystatus: {SafetyMode(s.safety_mode).name}", False
        if c == "programstate":
            state = {RuntimeState.PLAYING: "PLAYING", RuntimeState.PAUSED: "PAUSED"}.get(
                RuntimeState(s.runtime_state), "STOPPED")
            return f"{state} {core.loaded_program}", False
        if c == "running":
            return f"Program running: {str(core.program_running).lower()}", False
        if c == "is in remote control":
            return str(core.remote_control).lower(), False
        if c == "get serial number":
            return core.serial_number, False
        if c == "get robot model":
            return (core.robot_model or "UR3").rstrip("e"), False
        if c == "get loaded program":
            return f"Loaded program: {core.loaded_program}", False
        if c.startswith("load "):
            core.loaded_program = command[5:].strip()
            return f"Loading program: {core.loaded_program}", False
        if c == "play":
            if core.runtime_state == RuntimeState.PAUSED:
                core.state.update(runtime_state=int(RuntimeState.PLAYING))
                return "Starting program", False
            if core.safety_mode != SafetyMode.NORMAL or core.robot_mode != RobotMode.RUNNING:
                return "Failed to execute: play", False
            if core._last_program is not None:
                core._start_program(core._last_program)
                return "Starting program", False
            return "Failed to execute: play", False
        if c == "pause":
            if core.program_running:
                core.state.update(runtime_state=int(RuntimeState.PAUSED))
                core._halt_motion()
                return "Pausing program", False
            return "Failed to execute: pause", False
        if c == "stop":
            core._end_program("dashboard stop")
            return "Stopped", False
        if c == "power on":
            if s.robot_mode in (RobotMode.POWER_OFF, RobotMode.CONFIRM_SAFETY):
                core.state.update(robot_mode=int(RobotMode.IDLE))
            return "Powering on", False
        if c == "power off":
            core.robot_mode = RobotMode.POWER_OFF
            return "Powering off", False
        if c == "brake release":
            if s.robot_mode in (RobotMode.IDLE, RobotMode.POWER_ON):
                core.state.update(robot_mode=int(RobotMode.RUNNING))
            return "Brake releasing", False
        if c == "unlock protective stop":
            if core.safety_mode != SafetyMode.PROTECTIVE_STOP:
                return "Protective stop releasing", False  # nothing to unlock
            if time.monotonic() - core._protective_stop_time < core.protective_stop_unlock_delay:
                return ("Cannot unlock protective stop until 5s after occurrence. "
                        "Always inspect cause of protective stop before unlocking"), False
            core.state.update(safety_mode=int(SafetyMode.NORMAL))
            return "Protective stop releasing", False
        if c == "close safety popup":
            return "closing safety popup", False
        if c == "close popup":
            return "closing popup", False
        if c.startswith("popup"):
            return "showing popup", False
        if c == "restart safety":
            core.state.update(safety_mode=int(SafetyMode.NORMAL), robot_mode=int(RobotMode.POWER_OFF))
            core._end_program("restart safety")
            return "Restarting safety", False
        if c == "isprogramsaved":
            return f"true {core.loaded_program}", False
        if c.startswith("addtolog"):
            return "Added log message", False
        if c.startswith("setuserrole"):
            return f"Setting user role: {command[12:].strip()}", False
        if c == "get operational mode":
            return "NONE", False
        if c == "clear operational mode":
            return "No longer controlling the operational mode. ", False
        if c.startswith("set operational mode"):
            return f"Operational mode '{c[21:].strip()}' is set", False
        if c == "shutdown":
            return "Shutting down", True
        if c == "quit":
            return "Disconnected", True
    return f"could not understand: '{command}'", False
