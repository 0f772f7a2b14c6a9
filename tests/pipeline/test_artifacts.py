"""Filling KFP's own artifact classes (kfp.dsl), as the components do."""

from __future__ import annotations

import math

from kfp import dsl

from kubedistill.pipeline import artifacts


def test_fill_a_model_from_a_file_with_json_metadata(tmp_path):
    source = tmp_path / "student.pt"
    source.write_bytes(b"weights")
    model = dsl.Model(name="model", uri=str(tmp_path / "kfp" / "model"))
    artifacts.fill(model, file=source, metadata={"image_size": (64, 64), "final_loss": math.nan, "path": tmp_path,
                                                 "steps": 252})  # fmt: skip
    assert (tmp_path / "kfp" / "model").read_bytes() == b"weights"
    assert model.metadata == {"image_size": [64, 64], "final_loss": None, "path": str(tmp_path), "steps": 252}


def test_fill_from_a_folder_and_a_text(tmp_path):
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.yaml").write_text("a: 1\n")
    (folder / "sub" / "x.json").write_text("{}")
    training = dsl.Artifact(name="training", uri=str(tmp_path / "kfp" / "training"))
    artifacts.fill(training, folder=folder)
    assert (tmp_path / "kfp" / "training" / "sub" / "x.json").is_file()
    report = dsl.Markdown(name="report", uri=str(tmp_path / "kfp" / "report"))
    artifacts.fill(report, text="# Report\n")
    assert (tmp_path / "kfp" / "report").read_text() == "# Report\n"


def test_metrics_keep_finite_numbers_only():
    metrics = dsl.Metrics(name="metrics", uri="unused")
    artifacts.log_metrics(metrics, {"linear_top1": 0.5, "steps": 3, "gap": math.nan, "passed": True, "name": "x"})
    assert metrics.metadata == {"linear_top1": 0.5, "steps": 3.0}


def test_confusion_matrix_with_class_names():
    confusion = dsl.ClassificationMetrics(name="confusion", uri="unused")
    artifacts.log_confusion(confusion, ["cat", "dog"], [[3, 1], [0, 4]])
    matrix = confusion.metadata["confusionMatrix"]
    assert [spec["displayName"] for spec in matrix["annotationSpecs"]] == ["cat", "dog"]
    assert [row["row"] for row in matrix["rows"]] == [[3, 1], [0, 4]]
