"""Forward kinematics of UR arms from their published DH parameters (what the controller reports as
``actual_TCP_pose``), and rotation-vector helpers."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_DH = {  # d, a (standard DH, alpha = [pi/2, 0, 0, pi/2, -pi/2, 0]); UR's published parameters
    "UR3": ((0.1519, 0, 0, 0.11235, 0.08535, 0.0819), (0, -0.24365, -0.21325, 0, 0, 0)),
    "UR3e": ((0.15185, 0, 0, 0.13105, 0.08535, 0.0921), (0, -0.24355, -0.2132, 0, 0, 0)),
    "UR5": ((0.089159, 0, 0, 0.10915, 0.09465, 0.0823), (0, -0.425, -0.39225, 0, 0, 0)),
    "UR5e": ((0.1625, 0, 0, 0.1333, 0.0997, 0.0996), (0, -0.425, -0.3922, 0, 0, 0)),
    "UR10e": ((0.1807, 0, 0, 0.17415, 0.11985, 0.11655), (0, -0.6127, -0.57155, 0, 0, 0)),
}
_ALPHA = (math.pi / 2, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0)


def _rotvec_to_matrix(r: Sequence[float]) -> np.ndarray:
    r = np.asarray(r, dtype=float)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _matrix_to_rotvec(m: np.ndarray) -> np.ndarray:
    cos = max(-1.0, min(1.0, (np.trace(m) - 1) / 2))
    angle = math.acos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if math.pi - angle < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(m) + 1) / 2, 0))
        i = int(np.argmax(axis))
        for j in range(3):
            if j != i:
                axis[j] = math.copysign(axis[j], m[i, j] + m[j, i])
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2 * math.sin(angle))
    return axis * angle


def forward_kinematics(model: str, q: Sequence[float], tcp_offset: Sequence[float] = (0,) * 6) -> np.ndarray:
    """Base -> TCP pose ``[x, y, z, rx, ry, rz]`` (rotation vector) of a UR arm, standard DH."""
    d, a = _DH[model]
    t = np.eye(4)
    for theta, di, ai, alpha in zip(q, d, a, _ALPHA):
        ct, st, ca, sa = math.cos(theta), math.sin(theta), math.cos(alpha), math.sin(alpha)
        t = t @ np.array([[ct, -st * ca, st * sa, ai * ct], [st, ct * ca, -ct * sa, ai * st],
                          [0, sa, ca, di], [0, 0, 0, 1]])
    tcp = np.eye(4)
    tcp[:3, :3] = _rotvec_to_matrix(tcp_offset[3:])
    tcp[:3, 3] = tcp_offset[:3]
    t = t @ tcp
    return np.concatenate([t[:3, 3], _matrix_to_rotvec(t[:3, :3])])
