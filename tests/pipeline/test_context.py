"""PipelineContext: where a run's outputs go, what it accepts as a run id, and the failure records."""

from __future__ import annotations

import json

import pytest

from kubedistill.errors import ConfigError
from kubedistill.pipeline.context import PipelineContext, on_kfp_backend


def test_every_step_writes_below_the_run_id(tmp_path):
    context = PipelineContext(run_id="0f6c2a1e-run", output_root=str(tmp_path))
    assert context.run_uri == str(tmp_path / "0f6c2a1e-run")
    assert context.step_uri("distill") == str(tmp_path / "0f6c2a1e-run" / "distill")
    other = PipelineContext(run_id="7d1b", output_root=str(tmp_path))
    assert other.step_uri("distill") != context.step_uri("distill")


def test_gcs_output_root():
    context = PipelineContext(run_id="abc", output_root="gs://bucket/kubedistill/")
    assert context.step_uri("probe") == "gs://bucket/kubedistill/abc/probe"


def test_an_unresolved_placeholder_or_bad_root_is_refused_with_every_problem():
    with pytest.raises(ConfigError) as error:
        PipelineContext(run_id="{{$.pipeline_job_uuid}}", output_root="s3://bucket/x")
    assert len(error.value.problems) == 2
    assert "PIPELINE_JOB_ID_PLACEHOLDER" in error.value.problems[0]
    assert "s3://bucket/x" in error.value.problems[1]
    with pytest.raises(ConfigError, match="output_root: empty"):
        PipelineContext(run_id="abc", output_root="")


def test_kfp_run_link():
    context = PipelineContext.of("run-1", "/tmp/x", "name", "", "", "https://kubeflow.example.com/pipeline/")
    assert context.kfp_run_link == "https://kubeflow.example.com/pipeline/#/runs/details/run-1"
    assert context.experiment == "kubedistill"  # an empty experiment parameter means the default
    assert PipelineContext.of("run-1", "/tmp/x", "", "", "e", "").kfp_run_link == ""


def test_failures_are_recorded_per_step_and_read_in_pipeline_order(tmp_path):
    context = PipelineContext(run_id="r1", output_root=str(tmp_path))
    assert context.failures() == []
    context.record_failure("probe", ValueError("val has 0 images"))
    context.record_failure("validate", RuntimeError("too many bad images"))
    found = context.failures()
    assert [f["step"] for f in found] == ["validate", "probe"]
    assert found[1] == {"step": "probe", "error": "ValueError", "reason": "val has 0 images"}
    assert json.loads((tmp_path / "r1" / "validate" / "failure.json").read_text())["reason"] == "too many bad images"


def test_tracking_off_without_a_server(monkeypatch):
    context = PipelineContext(run_id="r1", output_root="/tmp/x")
    assert context.tracking_target() is None
    assert context.pipeline_run() is None
    assert context.step_mlflow("validate", None).enabled is False
    with pytest.raises(ConfigError, match="registering a model needs an MLflow server"):
        context.tracking_target(required=True)


def test_a_recurring_run_is_looked_up_only_on_a_kfp_backend_with_a_workflow_name(monkeypatch):
    from kubedistill.pipeline import recurring

    asked = []
    monkeypatch.setattr(recurring, "find_recurring_run", lambda name: asked.append(name) or "found")
    context = PipelineContext.of("r1", "gs://b/x", "n", "", "", "", "kubedistill-nightly-8x2kq")
    assert context.workflow_name == "kubedistill-nightly-8x2kq"
    assert context.recurring_run({}) is None and asked == []  # kfp.local or a plain process: never asks
    assert context.recurring_run({"KFP_POD_NAME": "p"}) == "found" and asked == ["kubedistill-nightly-8x2kq"]
    unresolved = PipelineContext.of("r1", "gs://b/x", "n", "", "", "", "{{$.pipeline_job_resource_name}}")
    assert unresolved.workflow_name == "" and unresolved.recurring_run({"KFP_POD_NAME": "p"}) is None


def test_a_kfp_backend_is_known_by_the_pod_name_it_injects():
    # backend/src/v2/compiler/argocompiler/common.go (commonEnvs): KFP_POD_NAME from metadata.name
    assert on_kfp_backend({"KFP_POD_NAME": "kubedistill-abc-system-container-impl-123", "KFP_POD_UID": "u"})
    assert not on_kfp_backend({})  # kfp.local, a shell, a test
    assert not on_kfp_backend({"KFP_POD_NAME": ""})


def test_a_local_output_root_is_refused_only_on_a_kfp_backend(tmp_path):
    on_kfp = {"KFP_POD_NAME": "p-1"}
    local = PipelineContext(run_id="r1", output_root=str(tmp_path))
    with pytest.raises(ConfigError, match="each step is a separate pod .* give a gs://bucket/prefix"):
        local.refuse_a_local_output_root_on_kfp(on_kfp)
    with pytest.raises(ConfigError):
        PipelineContext(run_id="r1", output_root=f"file://{tmp_path}").refuse_a_local_output_root_on_kfp(on_kfp)
    local.refuse_a_local_output_root_on_kfp({})  # kfp.local: one machine, a local folder is right
    PipelineContext(run_id="r1", output_root="gs://b/runs").refuse_a_local_output_root_on_kfp(on_kfp)
