"""The workcell twin: a MuJoCo copy of the paper's real-world cell (§4.2: a UR3 with a one-DoF
parallel gripper, a D435i above the table, four household tasks) that plays the robot. It serves
what the hardware serves (a UR controller on loopback, realsense-ros camera topics), so the robot
profiles run against it unchanged."""

from fedvla.rendering import use_headless_gl

use_headless_gl()  # before anything of the twin imports mujoco
