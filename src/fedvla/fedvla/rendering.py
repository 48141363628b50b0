"""MuJoCo picks its OpenGL backend when it is first imported: modules that render call
:func:`use_headless_gl` before importing it, so nodes render without a display."""
from __future__ import annotations

import os


def use_headless_gl() -> None:
    """EGL (headless) unless MUJOCO_GL says otherwise; OSMesa also needs PyOpenGL told."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
