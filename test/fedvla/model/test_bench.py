"""`fedvla bench policy` prints its figures for every kind (smoke run on the tiny config)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[3] / "config" / "model" / "tiny.yaml"


@pytest.mark.timeout(700)  # its subprocess may take 600 s; pytest.ini's 300 s would cut it short
def test_bench_prints_a_row_per_kind_and_the_ratio() -> None:
    fedvla_cli = Path(sys.prefix) / "bin" / "fedvla"
    result = subprocess.run([str(fedvla_cli), "bench", "policy", "--model-config", str(CONFIG), "--repeats", "3",
                             "--train-epochs", "1", "--threads", "1",
                             "--backends", "eager", "onnxruntime"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "200"})  # (rich wraps at the terminal's width)
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("dense", "topk", "adamoe", "dgmoe"):
        assert f"│ {kind}" in result.stdout or f"{kind} │" in result.stdout, result.stdout
    assert "trunk time DGMoE / top-2:" in result.stdout
    for figure in ("where a step's time goes", "matmul throughput", "is the floor for every MoE kind",
                   "trunk ratio floor", "dgmoe step per backend", "onnxruntime", "1 call per camera",
                   "1 call per expert", "its arithmetic floor", "x expert pairs per token", "DGMoE step / dense step",
                   "fastest DGMoE backend here"):
        assert figure in result.stdout, result.stdout
