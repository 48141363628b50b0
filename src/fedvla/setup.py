"""The ROS-free core. Installable with pip (``pip install src/fedvla``) or built by colcon."""
from setuptools import find_packages, setup

setup(
    name="fedvla",
    version="0.1.0",
    description="ROS-free core of FedVLA-ROS",
    packages=find_packages(include=["fedvla", "fedvla.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/fedvla"]),
        ("share/fedvla", ["package.xml"]),
    ],
    python_requires=">=3.11",
    install_requires=["numpy", "PyYAML", "rich"],
    extras_require={
        "realsense": ["pyrealsense2"],
        "sim": ["mujoco", "metaworld", "gymnasium", "packaging"],
        "bags": ["rosbags"],
        "flower": ["flwr[simulation]"],
    },
    entry_points={"console_scripts": ["fedvla = fedvla.cli:main"]},
    zip_safe=True,
)
