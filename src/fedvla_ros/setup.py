from setuptools import find_packages, setup

package_name = "fedvla_ros"

setup(
    name=package_name,
    version="0.1.0",
    description="Thin rclpy nodes of FedVLA-ROS",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "camera_node = fedvla_ros.camera_node:main",
            "bag_recorder = fedvla_ros.bag_recorder:main",
            "bag_player = fedvla_ros.bag_player:main",
            "replay_evaluator = fedvla_ros.replay_evaluator:main",
            "policy_node = fedvla_ros.policy_node:main",
            "scene_parser = fedvla_ros.scene_parser:main",
            "fed_server = fedvla_ros.fed_server:main",
            "fed_client = fedvla_ros.fed_client:main",
            "federation_bench = fedvla_ros.tools.federation_bench:main",
            "federation_soak = fedvla_ros.tools.federation_soak:main",
            "ur3_driver = fedvla_ros.ur3_driver:main",
            "motion_pattern = fedvla_ros.motion_pattern:main",
            "workcell_sim = fedvla_ros.workcell_sim:main",
            "rerun_viewer = fedvla_ros.rerun_viewer:main",
            "twin_demos = fedvla_ros.tools.twin_demos:main",
            "twin_evaluate = fedvla_ros.tools.twin_evaluate:main",
            "twin_latency = fedvla_ros.tools.twin_latency:main",
            "twin_study = fedvla_ros.tools.twin_study:main",
        ],
    },
)
