#!/usr/bin/env bash
# Source ROS 2 and the workspace, then run the command (default: the real-robot launch).
# Arguments that look like launch arguments (name:=value) are appended to the default command.
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /ws/install/setup.bash
if [ "$#" -eq 0 ] || [[ "$1" == *":="* ]]; then
  exec ros2 launch fedvla_bringup real_robot.launch.py "$@"
fi
exec "$@"
