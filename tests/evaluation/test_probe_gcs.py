"""The probe reads labeled images from gs:// (a validated manifest and a class-per-folder prefix) through the
real google-cloud-storage client against the emulator."""

from __future__ import annotations

from pathlib import Path

import kubedistill

from .conftest import COLOURS, export_random_student, write_labeled_images


def test_probe_on_a_gcs_manifest_and_a_gcs_folder(tmp_path: Path, gcs_bucket) -> None:
    for split, seed in (("train", 0), ("val", 1)):
        root = write_labeled_images(tmp_path / split, 8, seed=seed)
        for path in sorted(root.rglob("*.png")):
            gcs_bucket.blob(f"{split}/{path.relative_to(root).as_posix()}").upload_from_filename(str(path))
    validated = kubedistill.validate(data=f"gs://{gcs_bucket.name}/train", out=f"gs://{gcs_bucket.name}/v")
    assert validated.passed and validated.report["labels"]["layout"] == "class_per_folder"
    result = kubedistill.probe(
        checkpoint=export_random_student(tmp_path / "student.pt"),
        train=validated.manifest,
        val=f"gs://{gcs_bucket.name}/val",
        out=tmp_path / "probe",
        num_workers=0,
    )
    metrics = result.metrics
    assert metrics["num_train"] == metrics["num_val"] == 8 * len(COLOURS)
    assert metrics["num_classes"] == len(COLOURS)
    assert metrics["linear_top1"] >= 0.95 and metrics["knn_top1"] >= 0.95
