"""``kubedistill probe`` end to end on generated labeled images: metrics, confusion outputs, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kubedistill
from kubedistill.errors import ConfigError

from .conftest import COLOURS, export_random_student, write_labeled_images

KUBEDISTILL = Path(sys.executable).with_name("kubedistill")
METRIC_KEYS = {"linear_top1", "linear_top5", "knn_top1", "knn_top5", "num_train", "num_val", "num_classes", "feature_dim"}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return export_random_student(tmp_path_factory.mktemp("student") / "exported" / "student.pt")


def test_separable_classes_reach_100_percent_and_outputs_are_written(tmp_path, student):
    train = write_labeled_images(tmp_path / "train", 12, seed=0)
    val = write_labeled_images(tmp_path / "val", 6, seed=1)
    result = kubedistill.probe(checkpoint=student, train=train, val=val, out=tmp_path / "probe", num_workers=0)
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS and metrics == result.metrics
    assert metrics["linear_top1"] == 1.0 and metrics["knn_top1"] == 1.0
    assert (metrics["num_train"], metrics["num_val"], metrics["num_classes"], metrics["feature_dim"]) == (72, 36, 6, 512)
    confusion = json.loads((tmp_path / "probe" / "confusion_matrix.json").read_text())
    assert confusion["classes"] == [f"class{c}" for c in range(len(COLOURS))]
    assert confusion["linear"] == [[6 if i == j else 0 for j in range(6)] for i in range(6)]
    png = (tmp_path / "probe" / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert result.mlflow_run_id is None  # no tracking configured


def test_shuffled_labels_stay_near_chance(tmp_path, student):
    train = write_labeled_images(tmp_path / "train", 12, seed=0, shuffle_labels=True)
    val = write_labeled_images(tmp_path / "val", 10, seed=1, shuffle_labels=True)
    metrics = kubedistill.probe(checkpoint=student, train=train, val=val, out=tmp_path / "p", num_workers=0).metrics
    # Chance is 1/6 = 0.17 (60 val images: std 0.05); separable labels gave 1.0 above.
    assert metrics["linear_top1"] < 0.4 and metrics["knn_top1"] < 0.4, metrics


def test_cli_probe_prints_metrics_and_rejects_bad_arguments(tmp_path, student):
    train = write_labeled_images(tmp_path / "train", 4, seed=0)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MLFLOW_TRACKING_URI", None)
    ok = subprocess.run(
        [str(KUBEDISTILL), "probe", f"checkpoint={student}", f"train={train}", f"val={train}", f"out={tmp_path / 'o'}",
         "k=5", "num_workers=0"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    printed = json.loads(ok.stdout.strip().splitlines()[-1])
    assert printed["metrics"]["knn_k"] == 5 and printed["metrics"]["num_classes"] == 6
    bad = subprocess.run(
        [str(KUBEDISTILL), "probe", f"checkpoint={student}", f"train={train}", f"val={train}", "out=o", "k=0",
         "temperature=-1", "nope=1"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "unknown key 'nope' for probe" in bad.stderr


def test_invalid_values_are_all_reported(tmp_path, student):
    with pytest.raises(ConfigError) as raised:
        kubedistill.probe(checkpoint=student, train="t", val="v", out=tmp_path, k=0, temperature=-1.0, holdout_fraction=1.5)
    assert "3 configuration problem(s)" in str(raised.value)
    assert "k: must be >= 1" in str(raised.value) and "temperature: must be > 0" in str(raised.value)
