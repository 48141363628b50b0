"""The robot runtime: UR3 kinematics (Pinocchio), IK, object-centric retargeting, safety, arm backends."""
