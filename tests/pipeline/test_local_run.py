"""The compiled pipeline (pipelines/distillation_pipeline.yaml) run end to end by kfp.local, with a real
``mlflow server``: every artifact, the MLflow run tree and the registry; and a failing step.

Tiny settings (36 images, 28 px, a random dinov2/vits14 teacher, one epoch on 2 processes): what is checked is
the pipeline's plumbing and records, not the student's quality (`make demo` shows that).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from kubedistill.pipeline.local import PipelineFailedError, run_locally
from pipelines.distillation_pipeline import COMPILED

from ..evaluation.conftest import COLOURS, write_labeled_images

PER_CLASS = 6
STEPS = ("validate", "train", "probe", "register")


def _arguments(tmp_path: Path, data: Path, mlflow_uri: str, **overrides) -> dict:
    return {
        "dataset_uri": str(data / "train"),
        "probe_train_uri": str(data / "train"),
        "probe_val_uri": str(data / "val"),
        "output_root": str(tmp_path / "runs"),
        "student": "torchvision/resnet18",
        "teacher": "dinov2/vits14",
        "teacher_weights_uri": "none",
        "epochs": 1,
        "batch_size": 8,
        "image_size": 28,
        "gpus_per_node": 2,
        "launcher": "local",  # the compiled default is pytorchjob (a cluster)
        "train_args": "accelerator=cpu num_workers=0 log_every_n_steps=1",
        "mlflow_tracking_uri": mlflow_uri,
        "mlflow_experiment": f"pipeline-{tmp_path.name}",
        "registered_model_name": f"student-{tmp_path.name}".replace("_", "-"),
        "min_top1": 0.0,
        **overrides,
    }


def _task_outputs(pipeline_root: Path) -> dict[str, dict]:
    """Each task's executor_output.json (kfp.local keeps artifact metadata and Metrics values there)."""
    (run_folder,) = pipeline_root.iterdir()
    return {task.name: json.loads((task / "executor_output.json").read_text()) for task in run_folder.iterdir()
            if (task / "executor_output.json").is_file()}  # fmt: skip


def _artifact(outputs: dict, task: str, name: str) -> dict:
    (artifact,) = outputs[task]["artifacts"][name]["artifacts"]
    return artifact


def _with_backoff(compiled: Path, path: Path, backoff: str) -> Path:
    """A copy of the compiled pipeline whose retry policies wait ``backoff`` between tries (factor 1)."""
    documents = list(yaml.safe_load_all(compiled.read_text()))
    policies = _retry_policies(documents)
    assert policies and all(p["maxRetryCount"] == 2 for p in policies)
    for policy in policies:
        policy.update(backoffDuration=backoff, backoffFactor=1.0)
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def _retry_policies(node) -> list[dict]:
    if isinstance(node, dict):
        found = [node["retryPolicy"]] if isinstance(node.get("retryPolicy"), dict) else []
        return found + [p for value in node.values() for p in _retry_policies(value)]
    if isinstance(node, list):
        return [p for value in node for p in _retry_policies(value)]
    return []


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labeled")
    write_labeled_images(root / "train", PER_CLASS, seed=0)
    write_labeled_images(root / "val", 3, seed=1)
    return root


def test_pipeline_runs_every_step_and_records_it(tmp_path, labeled, mlflow_server):
    arguments = _arguments(tmp_path, labeled, mlflow_server)
    run = run_locally(COMPILED, arguments, pipeline_root=tmp_path / "kfp", log_file=tmp_path / "pipeline.log")

    assert run.summary["state"] == "SUCCEEDED" and run.summary["failed_step"] is None
    assert run.run_dir.parent == tmp_path / "runs"
    outputs = _task_outputs(tmp_path / "kfp")
    assert set(outputs) == {"validate-dataset", "distill", "linear-probe", "register-model", "finalize-run"}

    # validate: the manifest (its URI in the metadata), the report, the counts
    manifest = _artifact(outputs, "validate-dataset", "manifest")
    assert manifest["metadata"]["uri"] == str(run.step_dir("validate") / "manifest.jsonl")
    assert manifest["metadata"]["images"] == PER_CLASS * len(COLOURS)
    fingerprint = manifest["metadata"]["fingerprint"]
    assert fingerprint.startswith("sha256:")
    assert len(Path(manifest["uri"]).read_text().splitlines()) == PER_CLASS * len(COLOURS)
    assert "valid" in Path(_artifact(outputs, "validate-dataset", "report")["uri"]).read_text().lower()
    counts = _artifact(outputs, "validate-dataset", "counts")["metadata"]
    assert counts["images_ok"] == PER_CLASS * len(COLOURS) and counts["bad"] == 0

    # distill: the exported student with the run's facts; the training record
    model = _artifact(outputs, "distill", "model")
    meta = model["metadata"]
    assert meta["student"] == "torchvision/resnet18" and meta["teacher"] == "dinov2/vits14"
    assert meta["image_size"] == [28, 28] and meta["feature_dim"] == 512
    assert meta["steps"] == PER_CLASS * len(COLOURS) // 8 and meta["final_loss"] > 0
    assert meta["dataset_fingerprint"] == fingerprint
    assert meta["run_uri"] == str(run.step_dir("distill"))
    import kubedistill

    loaded = kubedistill.load_student(model["uri"])
    assert loaded.metadata.model == "torchvision/resnet18"
    training = Path(_artifact(outputs, "distill", "training")["uri"])
    assert {p.name for p in training.iterdir()} >= {"config.yaml", "train.log", "metrics.jsonl", "mlflow_run.json"}
    assert (run.step_dir("distill") / "checkpoints" / "last.pt").is_file()

    # probe: metrics with the references, the confusion matrix with class names, the gate
    metrics = _artifact(outputs, "linear-probe", "metrics")["metadata"]
    for prefix in ("", "random_", "teacher_"):
        assert 0.0 <= metrics[prefix + "linear_top1"] <= 1.0 and 0.0 <= metrics[prefix + "knn_top5"] <= 1.0
    confusion = _artifact(outputs, "linear-probe", "confusion")["metadata"]["confusionMatrix"]
    classes = [spec["displayName"] for spec in confusion["annotationSpecs"]]
    assert classes == [f"class{c}" for c in range(len(COLOURS))]
    assert sum(sum(row["row"]) for row in confusion["rows"]) == 3 * len(COLOURS)
    assert outputs["linear-probe"]["parameterValues"]["Output"] is True
    assert "Gate: **passed**" in Path(_artifact(outputs, "linear-probe", "summary")["uri"]).read_text()

    # register: the version and alias as outputs, and in the registry
    registered = outputs["register-model"]["parameterValues"]
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(arguments["registered_model_name"], registered["alias"])
    assert registered["alias"] == "champion" and int(version.version) == registered["version"] == 1
    assert _artifact(outputs, "register-model", "registration")["metadata"]["version"] == 1

    # MLflow: one parent run for the KFP run, the four steps nested under it, the outcome on the parent
    experiment = client.get_experiment_by_name(arguments["mlflow_experiment"])
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["kfp.run_id"] == run.run_id
    assert "kfp.scheduled_time" not in parent.data.tags  # a manual run
    assert parent.info.status == "FINISHED" and parent.data.tags["kubedistill.pipeline_state"] == "SUCCEEDED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["kubedistill.step"] for r in children) == sorted(STEPS)
    assert parent.data.metrics["linear_top1"] == pytest.approx(metrics["linear_top1"])
    assert parent.data.tags["kubedistill.registered_version"] == "1"
    assert parent.data.params["student"] == "torchvision/resnet18"
    assert json.loads((run.run_dir / "run.json").read_text())["mlflow_parent_run_id"] == parent.info.run_id


def test_a_failing_step_fails_the_run_with_its_reason_and_the_exit_handler_runs(tmp_path, labeled, mlflow_server):
    data = tmp_path / "data"
    write_labeled_images(data / "train", 2, seed=0)  # 12 good images ...
    for i in range(6):  # ... and 6 that are not images: a third of the data is bad
        (data / "train" / "class0" / f"broken{i}.jpg").write_bytes(b"not a jpeg at all" * 10)
    arguments = _arguments(tmp_path, labeled, mlflow_server, dataset_uri=str(data / "train"))
    # The committed DAG with its retries as compiled (2 per task), only the pauses between them cut from 20 s and
    # 40 s to 1 s each: kfp.local sleeps them for real, and what is checked is what the retries do.
    package = _with_backoff(COMPILED, tmp_path / "pipeline.yaml", "1s")

    with pytest.raises(PipelineFailedError, match=r"at step validate: .*not_an_image|at step validate: .*bad") as error:
        run_locally(package, arguments, pipeline_root=tmp_path / "kfp", log_file=tmp_path / "pipeline.log")

    (run_dir,) = (tmp_path / "runs").iterdir()
    assert str(run_dir) in str(error.value)
    summary = json.loads((run_dir / "run.json").read_text())  # written by the exit handler
    assert summary["state"] == "FAILED" and summary["failed_step"] == "validate"
    assert "max_bad_fraction" in summary["reason"] or "bad" in summary["reason"]
    assert (run_dir / "validate" / "report.md").is_file()  # the report is kept for the user
    assert not (run_dir / "distill").exists()
    outputs = _task_outputs(tmp_path / "kfp")
    assert "distill" not in outputs and "finalize-run" in outputs
    # kfp.local retries the task like KFP does (twice); the retries refuse the unchanged data at once
    log = re.sub(r"\x1b\[[0-9;]*m", "", (tmp_path / "pipeline.log").read_text())
    assert log.count("Executing task 'validate-dataset'") == 3
    refusals = re.findall(r"DataRejectedError: .*; the data has not changed since that verdict", log)
    assert len(refusals) == 2
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(arguments["mlflow_experiment"])
    parent = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["kubedistill.failed_step"] == "validate"
    assert parent.data.tags["kubedistill.pipeline_state"] == "FAILED"
