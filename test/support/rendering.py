"""Shared checks of processes that render with MuJoCo (imported by test modules)."""
from __future__ import annotations

import subprocess
import sys


def assert_trains_after_rendering(setup: str, render: str) -> None:
    """Run ``setup``, import torch, run ``render`` (it draws a frame), then build an optimizer and
    import torch._dynamo (which loads triton's LLVM) in one fresh process: it must survive. Rendering
    loads Mesa's LLVM; the renderers order the two loads (fedvla.rendering.load_llvm_users_first)."""
    script = (f"{setup}\nimport torch\n{render}\n"
              "torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])\n"
              "import torch._dynamo\n"
              "print('trained after rendering')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained after rendering" in result.stdout
