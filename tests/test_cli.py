"""The CLI as users run it: a real subprocess, `python -m kubedistill` and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubedistill.cli as cli

KUBEDISTILL = Path(sys.executable).with_name("kubedistill")
SEED_TRANSFORM_DEFAULTS = json.loads((Path(__file__).parent / "seed_transform_defaults.json").read_text())


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def test_describe_prints_every_default_as_json():
    result = _run(sys.executable, "-m", "kubedistill", "describe", "method=distillation")
    assert result.returncode == 0, result.stderr
    defaults = json.loads(result.stdout)
    assert defaults["transform_args"] == SEED_TRANSFORM_DEFAULTS
    assert set(defaults) >= {"method_args", "optim_args", "transform_args", "epochs", "batch_size"}


def test_train_command_from_the_issue_on_64_images(tmp_path, image_folder):
    """The documented quick command: epochs=1 batch_size=8, random vits14 teacher at 56 px, on CPU."""
    out = tmp_path / "out" / "exp"
    result = _run(
        str(KUBEDISTILL), "train", f"out={out}", f"data={image_folder}", "model=torchvision/resnet18",
        "method=distillation", "epochs=1", "batch_size=8", "method_args.teacher=dinov2/vits14",
        "method_args.teacher_weights=none", "transform_args.image_size=[56,56]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 8
    for name in ("config.yaml", "train.log", "metrics.jsonl", "checkpoints/last.pt", "exported/student.pt"):
        assert (out / name).is_file(), name
    # Not a terminal: plain progress lines with step, loss, img/s and ETA.
    assert "step 8/8 loss" in result.stderr and "img/s ETA" in result.stderr


def test_invalid_arguments_exit_2_listing_all_problems(tmp_path):
    result = _run(
        sys.executable, "-m", "kubedistill", "train", f"out={tmp_path}/o", "data=x", "model=torchvision/resnet18",
        "epochs=zero", "optim_args.lrr=1", "precision=fp8",
    )  # fmt: skip
    assert result.returncode == 2
    assert "3 configuration problem(s)" in result.stderr
    assert "epochs: got 'zero', expected int" in result.stderr
    assert "unknown key 'optim_args.lrr'" in result.stderr
    assert "precision: got 'fp8', expected one of 'auto', '32-true', 'bf16-mixed', 'bf16-teacher'" in result.stderr


def test_runtime_failure_exits_1_with_the_message(tmp_path, capsys):
    code = cli.main(["train", f"out={tmp_path / 'o'}", f"data={tmp_path / 'missing'}", "model=torchvision/resnet18"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err and str(tmp_path / "missing") in err


def test_usage(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert cli.main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'fly'; valid: " in err
    valid = err.split("valid: ", 1)[1].splitlines()[0].split(", ")
    assert {"train", "validate", "describe"} <= set(valid)
