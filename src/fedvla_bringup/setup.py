"""Installs the workspace's top-level launch/, config/ and urdf/ into share/fedvla_bringup,
so that ``ros2 launch fedvla_bringup <profile>.launch.py`` resolves in any ROS 2 install."""
import os
from pathlib import Path

from setuptools import find_packages, setup

package_name = "fedvla_bringup"
here = Path(__file__).resolve().parent
workspace = here.parent.parent


def share_tree(top: str) -> list[tuple[str, list[str]]]:
    """data_files entries for every file under ``<workspace>/<top>``, keeping sub-directories."""
    entries: dict[str, list[str]] = {}
    for path in sorted((workspace / top).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel_dir = path.parent.relative_to(workspace)
            entries.setdefault(f"share/{package_name}/{rel_dir}", []).append(os.path.relpath(path, here))
    return list(entries.items())


setup(
    name=package_name,
    version="0.1.0",
    description="Launch, parameter, RViz and URDF files of FedVLA-ROS",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
        *share_tree("urdf"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
)
