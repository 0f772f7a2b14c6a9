"""benchmarks/gpu_check.py is run on a GPU only when one is lent, under a short time limit: every path it takes
is run here first, on the CPU (``--device cpu``), so that a GPU's minutes are never spent on a broken script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from kubedistill.training.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_measures_every_row_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--out", str(tmp_path),
        "--models", "torchvision/resnet18", "--teacher", "dinov2/vits14", "--loaders", "torch,dali",
        "--compile", "false", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--image-size", "28",
        "--workers", "1", "--timeout", "240",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| torchvision/")]
    measured = {(cells[1].strip(), cells[2].strip(), cells[3].strip()): cells for cells in rows}
    assert set(measured) == {
        ("loader alone", "torch", "-"), ("loader alone", "dali", "-"), ("model alone", "-", "False"),
        ("whole step", "torch", "False"), ("whole step", "dali", "False"),
        ("whole step, DDP x 2 (gloo)", "torch", "False"), ("FLOPs per image", "-", "-"),
    }  # fmt: skip
    for key, cells in measured.items():
        rate = cells[4].strip()
        assert rate[:1].isdigit(), f"{key}: {rate}"  # a figure, not "exit 1: ..." or "timed out"
    # MFU is a share of a peak that was measured (no datasheet for a CPU) in the precision the model ran in: the
    # trainer's own choice here (fp32 on a CPU without native bf16, where an emulated bf16 peak would put the MFU
    # far above 100%).
    mfu = measured[("whole step", "torch", "False")][5].strip()
    assert mfu.endswith("%") and 0 < float(mfu[:-1]) < 100, mfu
    plan = resolve_precision("auto", torch.device("cpu"))
    assert f"{plan.name}, on cpu" in table
    assert "measured matmul" in table and f"{'bf16' if plan.student_bf16 else 'fp32'} peak" in table
