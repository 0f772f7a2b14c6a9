"""`submit` and `schedule` against tests/pipeline/fake_kfp.py, an HTTP server that speaks the KFP v2beta1 REST
calls they make (no KFP API server runs here): every end of a run has its own exit status, and scheduling again
replaces the recurring run instead of adding a second."""

from __future__ import annotations

import time

import pytest

from kubedistill.devtools.local_server import free_port
from kubedistill.pipeline import kfp_client
from pipelines import schedule as schedule_cli
from pipelines import submit as submit_cli

from .fake_kfp import FakeKfp

PARAMS = ["dataset_uri=gs://b/images", "probe_train_uri=gs://b/train", "probe_val_uri=gs://b/val",
          "output_root=gs://b/runs", "epochs=3"]  # fmt: skip


@pytest.fixture
def kfp(monkeypatch, request):
    server = FakeKfp(run_states=getattr(request, "param", None), token="t0ken")
    monkeypatch.setenv("KFP_ENDPOINT", server.url)
    monkeypatch.setenv("KFP_TOKEN", "t0ken")
    yield server
    server.close()


def _submit(*extra: str) -> int:
    args = [f"--param={p}" for p in PARAMS]
    return submit_cli.main([*args, "--poll=0.05", "--timeout=20", *extra])


@pytest.mark.parametrize("kfp", [["PENDING", "RUNNING", "SUCCEEDED"]], indirect=True)
def test_a_succeeded_run_exits_0_and_prints_its_link(kfp, capsys):
    assert _submit("--run-name=ci-1") == kfp_client.EXIT_SUCCEEDED
    out = capsys.readouterr().out
    (run,) = kfp.runs.values()
    assert f"run ci-1: {kfp.url}/#/runs/details/{run['run_id']}" in out and "SUCCEEDED" in out
    assert run["display_name"] == "ci-1"
    assert run["runtime_config"]["parameters"]["epochs"] == 3  # YAML-typed
    assert run["runtime_config"]["parameters"]["dataset_uri"] == "gs://b/images"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "kubedistill-distillation"  # the compiled package


@pytest.mark.parametrize("kfp", [["RUNNING", "FAILED"]], indirect=True)
def test_a_failed_run_exits_3_with_the_reason(kfp, capsys):
    assert _submit() == kfp_client.EXIT_FAILED == 3
    assert "FAILED: Task distill failed: node 0 exited with status 1" in capsys.readouterr().err


@pytest.mark.parametrize("kfp", [["RUNNING", "CANCELING", "CANCELED"]], indirect=True)
def test_a_canceled_run_is_final_and_exits_4(kfp, capsys):
    assert _submit() == kfp_client.EXIT_CANCELED == 4
    assert "CANCELED" in capsys.readouterr().err


@pytest.mark.parametrize("kfp", [["RUNNING"]], indirect=True)
def test_timeout_exits_5_and_can_cancel_the_run(kfp, capsys):
    started = time.monotonic()
    assert submit_cli.main([*(f"--param={p}" for p in PARAMS), "--poll=0.05", "--timeout=0.5"]) == 5
    assert time.monotonic() - started < 10
    assert "is still running" in capsys.readouterr().err
    assert submit_cli.main([*(f"--param={p}" for p in PARAMS), "--poll=0.05", "--timeout=0.5",
                            "--cancel-on-timeout"]) == kfp_client.EXIT_TIMEOUT  # fmt: skip
    assert "was terminated" in capsys.readouterr().err
    assert sum(1 for run in kfp.runs.values() if run.get("terminated")) == 1


def test_an_unreachable_endpoint_exits_6_at_once(monkeypatch, capsys):
    monkeypatch.setenv("KFP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    assert _submit() == kfp_client.EXIT_UNREACHABLE == 6
    assert time.monotonic() - started < 15  # kfp.Client alone retries healthz for ~25 s
    assert "is not reachable" in capsys.readouterr().err


def test_a_refused_token_exits_6_and_says_so(kfp, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    assert _submit() == kfp_client.EXIT_UNREACHABLE
    assert "answered 401" in capsys.readouterr().err and "KFP_TOKEN" not in str(kfp.runs)
    assert not kfp.runs


def test_bad_arguments_exit_2(kfp, monkeypatch, capsys):
    assert submit_cli.main(["--param", "novalue"]) == kfp_client.EXIT_USAGE
    monkeypatch.delenv("KFP_ENDPOINT")
    assert submit_cli.main([]) == kfp_client.EXIT_USAGE
    assert "set KFP_ENDPOINT" in capsys.readouterr().err


def test_scheduling_again_replaces_the_recurring_run(kfp, capsys):
    args = ["--cron", "0 30 2 * * *", *(f"--param={p}" for p in PARAMS)]
    assert schedule_cli.main(args) == 0
    (first,) = kfp.recurring.values()
    assert first["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * *"
    assert first["max_concurrency"] == 1
    assert first["no_catchup"] is True and first["display_name"] == "kubedistill-nightly"
    assert first["runtime_config"]["parameters"]["output_root"] == "gs://b/runs"
    assert len(kfp.pipelines) == 1 and len(kfp.versions) == 2  # the pipeline's first version and ours

    assert schedule_cli.main(args) == 0
    (second,) = kfp.recurring.values()  # one recurring run, not two
    assert second["recurring_run_id"] != first["recurring_run_id"]
    assert second["pipeline_version_reference"]["pipeline_version_id"] != first["pipeline_version_reference"]["pipeline_version_id"]
    assert len(kfp.pipelines) == 1 and len(kfp.versions) == 3
    out = capsys.readouterr().out
    assert f"replacing recurring run 'kubedistill-nightly' ({first['recurring_run_id']})" in out
    assert "deleted and created again" in out


def test_cron_needs_six_fields(kfp, capsys):
    assert schedule_cli.main(["--cron", "0 2 * * *"]) == kfp_client.EXIT_USAGE
    assert "KFP wants 6, seconds first" in capsys.readouterr().err
    assert not kfp.requests  # refused before talking to the server


def test_the_ci_arguments_are_parameters_of_the_pipeline():
    import inspect
    from pathlib import Path

    import yaml

    from pipelines.distillation_pipeline import distillation_pipeline

    root = Path(__file__).resolve().parents[2]
    arguments = yaml.safe_load((root / "ci" / "retrain.yaml").read_text())
    assert set(arguments) <= set(inspect.signature(distillation_pipeline.pipeline_func).parameters)
    workflow = yaml.safe_load((root / ".github" / "workflows" / "retrain.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["submit"]["steps"] if "run" in s]
    assert "make submit" in step["run"] and "ci/retrain.yaml" in step["run"]
    assert step["env"]["KFP_TOKEN"] == "${{ secrets.KFP_TOKEN }}"  # from a secret, never in the file
