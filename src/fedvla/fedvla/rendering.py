"""Rendering with MuJoCo in any process: the OpenGL backend is picked when mujoco is first
imported (:func:`use_headless_gl`, so nodes render without a display), and two LLVMs must load in
a safe order (:func:`load_llvm_users_first`, before the first GL context)."""
from __future__ import annotations

import importlib.util
import os


def use_headless_gl() -> None:
    """EGL (headless) unless MUJOCO_GL says otherwise; OSMesa also needs PyOpenGL told."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def load_llvm_users_first() -> None:
    """Import triton, if installed, before the first GL context.

    Without a GPU, EGL and OSMesa render with Mesa's llvmpipe, which loads the system libLLVM.
    triton (installed with torch's CUDA build) bundles another LLVM; importing it after Mesa's
    has loaded crashes the process, and torch imports it lazily (e.g. when an optimizer is
    built), so a process that renders and then trains would die. The other order is safe.
    """
    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401
