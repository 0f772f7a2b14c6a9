"""Run folders on gs:// (the real google-cloud-storage client against fake-gcs-server), and resumes that refuse
a configuration that would change the result."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import kubedistill
from kubedistill import storage
from kubedistill.errors import OutputDirError, StorageError
from kubedistill.training.checkpoint import CheckpointError, load_checkpoint
from kubedistill.training.runfolder import staging_dir

from ..conftest import TINY_RUN

FAST = TINY_RUN


def _names(bucket, prefix: str) -> set[str]:
    return {blob.name.removeprefix(prefix + "/") for blob in bucket.list_blobs(prefix=prefix + "/")}


def test_a_gcs_run_folder_holds_everything_and_resumes_from_the_bucket(tmp_path, image_folder, gcs_bucket, monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_CACHE_DIR", str(tmp_path / "node-a"))
    out = f"gs://{gcs_bucket.name}/runs/r1"
    result = kubedistill.train(out=out, data=image_folder, epochs=1, checkpoint_every_n_steps=2, log_every_n_steps=1,
                               **FAST)
    assert result.steps == 8
    names = _names(gcs_bucket, "runs/r1")
    assert {"config.yaml", "train.log", "metrics.jsonl", "exported/student.pt", "exported/student.json"} <= names
    steps = sorted(n for n in names if n.startswith("checkpoints/"))
    assert steps == ["checkpoints/step-00000004.pt", "checkpoints/step-00000006.pt", "checkpoints/step-00000008.pt"]
    assert len(storage.read_bytes(f"{out}/metrics.jsonl").decode().splitlines()) == 8
    assert yaml.safe_load(storage.read_bytes(f"{out}/config.yaml"))["out"] == out
    assert not (tmp_path / "gs:").exists()

    # Another node (an empty cache) resumes the finished run from the bucket alone.
    monkeypatch.setenv("KUBEDISTILL_CACHE_DIR", str(tmp_path / "node-b"))
    again = kubedistill.train(out=out, data=image_folder, epochs=1, resume_interrupted=True, **FAST)
    assert again.already_finished and again.steps == 8
    assert (staging_dir(out, tmp_path / "node-b") / "checkpoints" / "step-00000008.pt").is_file()

    with pytest.raises(OutputDirError, match=r"already holds a run\. Pass overwrite=true"):
        kubedistill.train(out=out, data=image_folder, epochs=1, **FAST)
    storage.write_bytes(f"gs://{gcs_bucket.name}/runs/r1/notes.txt", b"mine")
    kubedistill.train(out=out, data=image_folder, max_steps=2, overwrite=True, **FAST)
    names = _names(gcs_bucket, "runs/r1")
    assert "notes.txt" in names  # overwrite removes only the run's own files
    assert sorted(n for n in names if n.startswith("checkpoints/")) == ["checkpoints/step-00000002.pt"]


def test_a_resume_that_would_change_the_result_is_refused_naming_the_keys(tmp_path, image_folder):
    out = tmp_path / "run"
    kubedistill.train(out=out, data=image_folder, max_steps=2, **FAST)
    saved = load_checkpoint(out / "checkpoints" / "last.pt")["config"]
    assert saved["seed"] == 0 and saved["world_size"] == 1 and "data_fingerprint" in saved
    with pytest.raises(CheckpointError) as error:
        kubedistill.train(out=out, data=image_folder, max_steps=2, resume_interrupted=True, seed=1,
                          **{**FAST, "method_args": {**FAST["method_args"], "temperature": 0.1}})  # fmt: skip
    message = str(error.value)
    assert "seed: 0 -> 1" in message and "method_args.temperature: 0.07 -> 0.1" in message
    assert "log_every_n_steps" not in message
    # Where and how it runs may change: logging cadence, workers, MLflow.
    result = kubedistill.train(out=out, data=image_folder, max_steps=2, resume_interrupted=True, log_every_n_steps=1,
                               mlflow={"enabled": False}, **FAST)  # fmt: skip
    assert result.already_finished


def test_checkpoints_carry_the_rng_and_the_configuration(tmp_path, image_folder):
    out = tmp_path / "run"
    kubedistill.train(out=out, data=image_folder, max_steps=1, **FAST)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["rng"]["torch"].dtype == torch.uint8 and state["rng"]["torch"].numel() > 0
    assert state["rng"]["cuda"] is None  # a CPU run
    assert json.dumps(state["config"])  # plain values
    assert not any(key.startswith(("mlflow.", "loader_args.")) for key in state["config"])


def test_probe_and_register_read_the_run_from_the_bucket(tmp_path, gcs_bucket, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ..evaluation.conftest import write_labeled_images

    monkeypatch.setenv("KUBEDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    train = write_labeled_images(tmp_path / "train", 6, seed=0)
    val = write_labeled_images(tmp_path / "val", 3, seed=1)
    out = f"gs://{gcs_bucket.name}/runs/registered"
    kubedistill.train(out=out, data=train, max_steps=2, **FAST)
    probed = kubedistill.probe(checkpoint=f"{out}/exported/student.pt", train=train, val=val, out=tmp_path / "probe",
                               num_workers=0)  # fmt: skip
    assert probed.metrics["num_val"] == 18
    storage.upload_file(tmp_path / "probe" / "metrics.json", f"{out}/probe/metrics.json")
    result = kubedistill.register(model=f"{out}/exported/student.pt", metrics=f"{out}/probe/metrics.json",
                                  name="from-the-bucket", tracking_uri=mlflow_server)  # fmt: skip
    assert (result.version, result.alias, result.created) == (1, "champion", True)
    tags = MlflowClient(mlflow_server).get_model_version("from-the-bucket", "1").tags
    config = yaml.safe_load(storage.read_bytes(f"{out}/config.yaml"))
    assert tags["kubedistill.student"] == "torchvision/resnet18"
    assert tags["kubedistill.teacher"] == "dinov2/vits14" and tags["kubedistill.config_hash"] != "unknown"
    assert tags["kubedistill.data"] == config["data"]
    with pytest.raises(StorageError, match=r"exported/missing\.pt not found: the bucket .* does not exist"):
        kubedistill.register(model=f"{out}/exported/missing.pt", metrics=f"{out}/probe/metrics.json",
                             name="from-the-bucket", tracking_uri=mlflow_server)  # fmt: skip
