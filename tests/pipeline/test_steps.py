"""The steps' own decisions: train arguments, job names, the gate, the probe summary, validate's outcomes
(local and gs:// output roots), and the exit handler's record."""

from __future__ import annotations

import json
import re

import pytest

from kubedistill import storage
from kubedistill.config import build_train_config
from kubedistill.errors import ConfigError
from kubedistill.launch import job_name
from kubedistill.pipeline import steps
from kubedistill.pipeline.context import PipelineContext
from kubedistill.tracking.config import MLflowArgs

from ..conftest import write_images


def _train_values(context, **overrides):
    values = dict(manifest_uri="/data/manifest.jsonl", student="torchvision/resnet18", teacher="dinov2/vitb14",
                  teacher_weights="", epochs=3, batch_size=64, image_size=160, train_args="",
                  mlflow=MLflowArgs(enabled=False))  # fmt: skip
    return steps.train_values(context, **{**values, **overrides})


def test_train_values_carry_the_parameters_and_merge_train_args(tmp_path):
    context = PipelineContext(run_id="r1", output_root=str(tmp_path))
    values = _train_values(context, teacher_weights="gs://b/w.pth", train_args=(
        "optim=adamw optim_args.lr=0.001 method_args.mixup=false transform_args.random_gray_scale=0 max_steps=10"))
    assert values["out"] == context.step_uri("distill") and values["data"] == "/data/manifest.jsonl"
    assert values["resume_interrupted"] is True  # a retried task resumes its own run
    assert values["method_args"] == {"mixup": False, "teacher": "dinov2/vitb14", "teacher_weights": "gs://b/w.pth"}
    assert values["transform_args"] == {"random_gray_scale": 0, "image_size": [160, 160]}
    assert values["optim_args"] == {"lr": 0.001} and values["max_steps"] == 10
    assert values["mlflow"]["enabled"] is False
    config = build_train_config(values)  # the library accepts what the step builds
    assert list(config.transform_args.image_size) == [160, 160]
    assert "teacher_weights" not in _train_values(context)["method_args"]  # empty: the official weights


def test_train_args_cannot_override_what_the_pipeline_sets(tmp_path):
    context = PipelineContext(run_id="r1", output_root=str(tmp_path))
    with pytest.raises(ConfigError) as error:
        _train_values(context, train_args="out=/elsewhere epochs=5 seed=3")
    assert len(error.value.problems) == 2
    assert "'epochs'" in error.value.problems[0] and "'out'" in error.value.problems[1]
    with pytest.raises(ConfigError, match="not of the form key=value"):
        _train_values(context, train_args="optim adamw")


@pytest.mark.parametrize("run_id", ["58870941", "0d6e3c1a-2b4f-4e4b-9a1e-1f0b6c7d8e9f", "Run_With.Odd-Chars", "x" * 120])
def test_job_names_are_dns_1035_labels_and_stable(run_id):
    name = job_name(run_id)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 50
    assert job_name(run_id) == name  # a retried task finds its own job
    assert job_name(run_id + "1") != name


def test_gate():
    assert steps.gate({"linear_top1": 0.6}, 0.5) == (True, "linear top-1 0.6000 >= min_top1 0.5")
    passed, reason = steps.gate({"linear_top1": 0.4}, 0.5)
    assert not passed and "not registered" in reason
    assert steps.gate({"linear_top1": 0.5}, 0.5)[0]  # at the threshold passes
    assert steps.gate({}, 0.0) == (False, "the probe produced no linear_top1")


def test_probe_summary_shows_the_references_and_the_gate():
    metrics = {"linear_top1": 0.5, "linear_top5": 0.9, "knn_top1": 0.45, "knn_top5": 0.8, "random_linear_top1": 0.1,
               "random_linear_top5": 0.5, "random_knn_top1": 0.1, "random_knn_top5": 0.5,
               "teacher_linear_top1": 0.9, "teacher_linear_top5": 1.0, "teacher_knn_top1": 0.88,
               "teacher_knn_top5": 0.99, "gap_closed": 0.5}  # fmt: skip
    text = steps.probe_markdown(metrics, True, "linear top-1 0.5000 >= min_top1 0.3", {"student": "s", "teacher": "t"})
    lines = text.splitlines()
    assert lines.index("| random-init student | 0.100 | 0.500 | 0.100 | 0.500 |") < lines.index(
        "| distilled student | 0.500 | 0.900 | 0.450 | 0.800 |") < lines.index("| teacher (t) | 0.900 | 1.000 | 0.880 | 0.990 |")
    assert "Gap closed (random -> teacher, linear top-1): **0.500**" in text and "Gate: **passed**" in text
    plain = steps.probe_markdown({k: v for k, v in metrics.items() if k.startswith(("linear", "knn"))}, False, "r", {})
    assert "random-init" not in plain and "Gap closed" not in plain and "Gate: **not passed**" in plain


def test_validate_step_passes_and_gives_the_manifest(tmp_path):
    write_images(tmp_path / "images", 10)
    context = PipelineContext(run_id="r1", output_root=str(tmp_path / "runs"))
    result = steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    assert result.manifest_uri == str(tmp_path / "runs" / "r1" / "validate" / "manifest.jsonl")
    assert len(result.manifest_file.read_text().splitlines()) == 10
    assert result.counts["images_ok"] == 10 and result.counts["bad"] == 0
    assert result.metadata["uri"] == result.manifest_uri and result.metadata["fingerprint"].startswith("sha256:")
    assert "10" in result.report_markdown


def test_validate_refuses_a_local_output_root_on_a_kfp_backend_before_any_work(tmp_path, monkeypatch):
    write_images(tmp_path / "images", 4)
    monkeypatch.setenv("KFP_POD_NAME", "kubedistill-xyz-system-container-impl-1")  # what the backend injects
    context = PipelineContext(run_id="r1", output_root=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="give a gs://bucket/prefix"):
        steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    assert not (tmp_path / "runs").exists()  # nothing validated, nothing written


def test_validate_step_rejects_bad_data_and_records_why(tmp_path):
    write_images(tmp_path / "images", 4)
    for i in range(4):
        (tmp_path / "images" / f"broken{i}.jpg").write_bytes(b"")
    context = PipelineContext(run_id="r1", output_root=str(tmp_path / "runs"))
    with pytest.raises(steps.DataRejectedError, match="report.md") as error:
        steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    (failure,) = context.failures()
    assert failure["step"] == "validate" and failure["error"] == "DataRejectedError"
    assert failure["reason"] == str(error.value)
    assert (tmp_path / "runs" / "r1" / "validate" / "report.json").is_file()  # outputs are written first


def test_validate_step_with_a_gcs_output_root(tmp_path, gcs_bucket):
    write_images(tmp_path / "images", 6)
    context = PipelineContext(run_id="r2", output_root=f"gs://{gcs_bucket.name}/runs")
    result = steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    assert result.manifest_uri == f"gs://{gcs_bucket.name}/runs/r2/validate/manifest.jsonl"
    assert len(result.manifest_file.read_text().splitlines()) == 6  # a local copy for the KFP artifact
    assert storage.exists(f"gs://{gcs_bucket.name}/runs/r2/validate/report.md")
    context.record_failure("probe", RuntimeError("transient"))
    assert [f["step"] for f in context.failures()] == ["probe"]
    context.clear_failure("probe")
    assert context.failures() == []


def test_a_local_step_folder_is_uploaded_to_a_gcs_output_root(tmp_path, gcs_bucket):
    uri = f"gs://{gcs_bucket.name}/runs/r3/probe"
    with steps._local_folder(uri) as folder:
        (folder / "metrics.json").write_text('{"linear_top1": 0.5}')
        (folder / "plots").mkdir()
        (folder / "plots" / "confusion.png").write_bytes(b"png")
    assert json.loads(storage.read_bytes(f"{uri}/metrics.json")) == {"linear_top1": 0.5}
    assert storage.read_bytes(f"{uri}/plots/confusion.png") == b"png"


def test_finalize_records_the_outcome_without_mlflow(tmp_path):
    context = PipelineContext(run_id="r4", output_root=str(tmp_path))
    context.record_failure("distill", RuntimeError("node 0 exited with status 1"))
    result = steps.finalize(context, state="FAILED", error_message="Task exit-handler-1 failed.")
    assert (result.succeeded, result.failed_step, result.reason) == (False, "distill", "node 0 exited with status 1")
    record = json.loads((tmp_path / "r4" / "run.json").read_text())
    assert record["state"] == "FAILED" and record["failed_step"] == "distill" and "mlflow_parent_run_id" not in record
    clean = PipelineContext(run_id="r5", output_root=str(tmp_path))
    assert steps.finalize(clean, state="FAILED", error_message="Task exit-handler-1 failed.").reason == (
        "Task exit-handler-1 failed.")  # nothing recorded by a step (e.g. a pod evicted): KFP's message
    assert steps.finalize(clean, state="SUCCEEDED").succeeded  # kfp.local's word


def _parent_run(mlflow_server, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    (parent,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return parent


@pytest.mark.parametrize("state", ["COMPLETE", "CACHED"])
def test_finalize_takes_the_kfp_backends_success_states_for_a_success(tmp_path, mlflow_server, state):
    # KFP's open-source backend passes MLMD's execution state (backend/src/v2/driver/resolve.go), not SUCCEEDED.
    experiment = f"finalize-{state.lower()}-{tmp_path.name}"
    context = PipelineContext(run_id="r10", output_root=str(tmp_path), tracking_uri=mlflow_server, experiment=experiment)
    context.pipeline_run(required=True)  # opened by the first step
    result = steps.finalize(context, state=state, error_message="")
    assert (result.succeeded, result.failed_step, result.reason) == (True, None, None)
    record = json.loads((tmp_path / "r10" / "run.json").read_text())
    assert record["state"] == state and record["succeeded"] is True and record["reason"] is None
    parent = _parent_run(mlflow_server, experiment)
    assert parent.info.status == "FINISHED" and parent.data.tags["kubedistill.pipeline_state"] == "SUCCEEDED"
    assert record["mlflow_parent_run_id"] == parent.info.run_id


@pytest.mark.parametrize("state", ["FAILED", "CANCELED", "RUNNING", "SOMETHING_NEW", ""])
def test_finalize_records_every_other_state_as_a_failure(tmp_path, mlflow_server, state):
    experiment = f"finalize-{state.lower() or 'empty'}-{tmp_path.name}"
    context = PipelineContext(run_id="r11", output_root=str(tmp_path), tracking_uri=mlflow_server, experiment=experiment)
    context.pipeline_run(required=True)
    result = steps.finalize(context, state=state, error_message="")  # the backend leaves the message empty
    record = json.loads((tmp_path / "r11" / "run.json").read_text())
    assert not result.succeeded and record["succeeded"] is False and record["state"] == (state or "UNKNOWN")
    if state in ("FAILED", "CANCELED"):
        assert record["reason"] == f"the pipeline ended {state}"
    else:  # a word kubedistill does not know is never taken for a success, and the record says so
        assert "does not know as a success" in record["reason"] and "COMPLETE" in record["reason"]
    parent = _parent_run(mlflow_server, experiment)
    assert parent.info.status == "FAILED" and parent.data.tags["kubedistill.pipeline_state"] == "FAILED"
    assert parent.data.tags["kubedistill.failure"] == record["reason"]


def test_register_without_an_mlflow_server_fails_and_says_what_to_set(tmp_path):
    context = PipelineContext(run_id="r6", output_root=str(tmp_path))
    with pytest.raises(ConfigError, match="mlflow_tracking_uri: empty"):
        steps.register(context, model_file="m", training_folder="t", probe_folder="p", name="n")
    (failure,) = context.failures()
    assert failure["step"] == "register" and "MLflow server" in failure["reason"]


def test_a_retry_does_not_validate_unchanged_rejected_data_again(tmp_path):
    write_images(tmp_path / "images", 4)
    for i in range(4):
        (tmp_path / "images" / f"broken{i}.jpg").write_bytes(b"")
    context = PipelineContext(run_id="r7", output_root=str(tmp_path / "runs"))
    with pytest.raises(steps.DataRejectedError):
        steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    report = tmp_path / "runs" / "r7" / "validate" / "report.json"
    first = report.stat().st_mtime_ns
    with pytest.raises(steps.DataRejectedError, match="has not changed since that verdict"):
        steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")  # KFP's retry of the task
    assert report.stat().st_mtime_ns == first  # not validated again
    with pytest.raises(steps.DataRejectedError) as stricter:  # other checks: validated again
        steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work", max_bad_fraction=0.01)
    assert "has not changed" not in str(stricter.value)
    for i in range(4):  # the data was fixed before "Retry run": validated again, and it passes
        (tmp_path / "images" / f"broken{i}.jpg").unlink()
    assert steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work").counts["images_ok"] == 4
    assert report.stat().st_mtime_ns != first
    assert context.failures() == []  # the attempt that worked clears the earlier attempts' record


def test_cluster_launchers_need_a_gcs_output_root(tmp_path):
    context = PipelineContext(run_id="r8", output_root=str(tmp_path))
    with pytest.raises(ConfigError, match="launcher=pytorchjob trains in pods that cannot write this task's disk"):
        steps.distill(context, manifest_uri="m.jsonl", workdir=tmp_path / "work", student="torchvision/resnet18",
                      teacher="dinov2/vits14", launcher="pytorchjob")  # fmt: skip
    assert context.failures()[0]["step"] == "distill"
    with pytest.raises(ConfigError) as error:
        steps.job_settings("kueue_queue=-starts-with-a-dash shm_size=lots", gpu_type="nvidia-l4")
    assert len(error.value.problems) == 2 and all(p.startswith("launch_args: ") for p in error.value.problems)
    assert steps.job_settings("service_account=kd kueue_queue=gpu", gpu_type="nvidia-l4").gpu_type == "nvidia-l4"


def test_distill_with_a_gcs_output_root_trains_into_the_bucket(tmp_path, gcs_bucket):
    write_images(tmp_path / "images", 20)
    context = PipelineContext(run_id="r9", output_root=f"gs://{gcs_bucket.name}/runs")
    validated = steps.validate(context, dataset_uri=str(tmp_path / "images"), workdir=tmp_path / "work")
    assert validated.manifest_file.read_bytes() == storage.read_bytes(validated.manifest_uri)
    result = steps.distill(
        context, manifest_uri=validated.manifest_uri, workdir=tmp_path / "work", student="torchvision/resnet18",
        teacher="dinov2/vits14", teacher_weights="none", epochs=1, batch_size=8, image_size=28, gpus_per_node=1,
        train_args="accelerator=cpu num_workers=0",
    )  # fmt: skip
    # The local copies go into the caller's folder (a component's temporary one), nowhere else.
    assert {validated.manifest_file.parent, result.model_file.parent} == {tmp_path / "work"}
    out = f"gs://{gcs_bucket.name}/runs/r9/distill"
    assert result.run_uri == out and result.metadata["run_uri"] == out and result.metadata["steps"] == 2
    assert storage.exists(f"{out}/exported/student.pt") and storage.exists(f"{out}/checkpoints/step-00000002.pt")
    assert result.model_file.read_bytes() == storage.read_bytes(f"{out}/exported/student.pt")
    assert {p.name for p in result.training_folder.iterdir()} >= {"config.yaml", "metrics.jsonl", "student.json"}


def test_the_parent_run_of_a_recurring_runs_run_carries_its_schedule(tmp_path, mlflow_server, monkeypatch):
    from kubedistill.pipeline import recurring

    monkeypatch.setenv("KFP_POD_NAME", "kubedistill-nightly-7k2xq-3-system-container-impl-1")
    found = recurring.RecurringRun("5d0e7a52-uid", "kubedistill-nightly-7k2xq", "2026-12-02T02:00:00Z")
    monkeypatch.setattr(recurring, "find_recurring_run", lambda name: found if name == "wf-scheduled" else None)
    experiment = f"recurring-{tmp_path.name}"
    for run_id, workflow in (("r12", "wf-scheduled"), ("r13", "wf-manual")):
        PipelineContext.of(run_id, "gs://b/runs", run_id, mlflow_server, experiment, "", workflow).pipeline_run(required=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = {r.data.tags["kfp.run_id"]: r.data.tags for r in
            client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}  # fmt: skip
    assert runs["r12"]["kfp.scheduled_time"] == "2026-12-02T02:00:00Z"
    assert runs["r12"]["kfp.recurring_run_id"] == "5d0e7a52-uid"
    assert not {"kfp.scheduled_time", "kfp.recurring_run_id"} & set(runs["r13"])  # a manual run: no schedule
