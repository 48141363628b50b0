"""The engines a policy step can run on (:mod:`fedvla.model.acceleration` converts a policy to
one); apart so that configs and command lines name them without importing torch."""
from __future__ import annotations

import enum


class StepBackend(str, enum.Enum):
    EAGER = "eager"
    COMPILE = "compile"
    TORCHSCRIPT = "torchscript"
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"
