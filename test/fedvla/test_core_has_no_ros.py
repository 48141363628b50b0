"""The core (src/fedvla) must import and work with no ROS 2 installed."""
import pkgutil
import subprocess
import sys
from pathlib import Path

import fedvla

BLOCKER = r'''
import importlib.abc, sys
ROS = ("rclpy", "rcl_interfaces", "launch", "launch_ros", "ament_index_python", "builtin_interfaces",
       "std_msgs", "sensor_msgs", "geometry_msgs", "fedvla_interfaces", "fedvla_ros", "fedvla_bringup")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ROS:
            raise ImportError(f"ROS module {name} imported by the core")
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok", len(sys.argv) - 1)
'''


def core_modules() -> list[str]:
    return ["fedvla"] + [m.name for m in pkgutil.walk_packages(fedvla.__path__, "fedvla.")]


def test_every_core_module_imports_without_ros() -> None:
    modules = core_modules()
    assert "fedvla.camera.realsense" in modules and "fedvla.runner" in modules
    result = subprocess.run([sys.executable, "-c", BLOCKER, *modules], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(modules)}"


def test_no_source_file_of_the_core_mentions_rclpy() -> None:
    root = Path(fedvla.__file__).parent
    offenders = [p for p in root.rglob("*.py") if "import rclpy" in p.read_text() or "from rclpy" in p.read_text()]
    assert offenders == []
