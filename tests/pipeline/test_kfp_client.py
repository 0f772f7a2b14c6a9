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


@pytest.fixture
def fake_kfp(monkeypatch):
    """A FakeKfp made by the test itself (other settings); closed at the end."""
    made = []

    def make(**settings) -> FakeKfp:
        made.append(FakeKfp(**{"token": "t0ken", **settings}))
        monkeypatch.setenv("KFP_ENDPOINT", made[-1].url)
        monkeypatch.setenv("KFP_TOKEN", "t0ken")
        return made[-1]

    yield make
    for server in made:
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
    # the compiled package: pipeline spec and the kfp-kubernetes platform spec, as kfp.Client sends both
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubedistill-distillation"
    assert "exec-distill" in run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


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
    assert sum(1 for run in kfp.runs.values() if run.get("_fake_terminated")) == 1


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


def test_a_failing_status_check_is_retried_and_the_run_followed_to_its_end(fake_kfp, capsys):
    # A proxy answering 503/500 while the API server restarts, then connections dropped without an answer
    # (urllib3 retries those 3 times itself: 5 in a row reach submit).
    kfp = fake_kfp(run_states=["RUNNING", "SUCCEEDED"], poll_failures=["503", "500"] + ["drop"] * 5)
    assert _submit("--retry-for=60") == kfp_client.EXIT_SUCCEEDED
    err = capsys.readouterr().err
    assert "HTTP 503" in err and "HTTP 500" in err and "trying again" in err
    assert "RemoteDisconnected" in err  # the dropped connections, once urllib3 gave up on them
    assert "Traceback" not in err
    assert not kfp.poll_failures  # every failure was met


def test_a_status_check_that_keeps_failing_exits_6_and_says_the_run_goes_on(fake_kfp, capsys):
    kfp = fake_kfp(run_states=["RUNNING"], poll_failures=["500"] * 1000)
    started = time.monotonic()
    assert _submit("--retry-for=1.5") == kfp_client.EXIT_UNREACHABLE == 6
    assert time.monotonic() - started < 15
    err = capsys.readouterr().err
    (run,) = kfp.runs.values()
    assert f"did not answer for run {run['run_id']}" in err and "HTTP 500" in err and "the run goes on" in err
    assert not run.get("_fake_terminated")  # it is not ours to stop


def test_a_refused_token_during_the_run_is_not_retried(fake_kfp, monkeypatch, capsys):
    kfp = fake_kfp(run_states=["RUNNING"])
    original = kfp_client.submit

    def revoke_after_the_first_check(client, *args, **kwargs):
        get_run = client.get_run

        def checked_once(run_id):
            details = get_run(run_id)
            kfp.token = "rotated"  # the token stops working while the run goes on
            return details

        monkeypatch.setattr(client, "get_run", checked_once)
        return original(client, *args, **kwargs)

    monkeypatch.setattr(kfp_client, "submit", revoke_after_the_first_check)
    assert _submit("--retry-for=60") == kfp_client.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "reading the state of run" in err and "HTTP 401" in err and "trying again" not in err
    assert sum(1 for method, path in kfp.requests if path.startswith("/apis/v2beta1/runs/")) == 2


@pytest.mark.parametrize("tag", ["2.5.0", "1.8.22"])
def test_a_backend_older_than_2_14_is_refused_before_anything_is_submitted(fake_kfp, capsys, tag):
    kfp = fake_kfp(tag_name=tag)
    assert _submit() == kfp_client.EXIT_UNREACHABLE
    assert f"runs KFP {tag}; the pipeline needs KFP >= 2.14.0" in capsys.readouterr().err
    assert not kfp.runs and kfp.requests == [("GET", "/apis/v2beta1/healthz")]


@pytest.mark.parametrize("tag", ["unknown", "master-55ec846"])
def test_a_backend_that_does_not_say_its_version_gets_a_warning(fake_kfp, capsys, tag):
    fake_kfp(tag_name=tag)
    assert _submit() == kfp_client.EXIT_SUCCEEDED
    assert f"healthz tag_name {tag!r}" in capsys.readouterr().err
    assert kfp_client.check_backend_version("2.14.0") and kfp_client.check_backend_version("v2.17.1")


def test_multi_user_runs_go_to_the_namespace_given(fake_kfp, capsys):
    kfp = fake_kfp(multi_user=True)
    assert _submit("--namespace=team-a") == kfp_client.EXIT_SUCCEEDED
    (experiment,) = kfp.experiments.values()
    assert experiment["namespace"] == "team-a" and experiment["display_name"] == "kubedistill-ci"
    (run,) = kfp.runs.values()
    assert run["experiment_id"] == experiment["experiment_id"]
    args = ["--cron", "0 30 2 * * *", "--namespace=team-a", *(f"--param={p}" for p in PARAMS)]
    assert schedule_cli.main(args) == 0
    (nightly,) = [e for e in kfp.experiments.values() if e["display_name"] == "kubedistill-nightly"]
    assert nightly["namespace"] == "team-a"
    (recurring,) = kfp.recurring.values()
    assert recurring["experiment_id"] == nightly["experiment_id"]


def test_multi_user_without_a_namespace_is_a_usage_error(fake_kfp, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")  # not in a pod
    kfp = fake_kfp(multi_user=True)
    assert _submit() == kfp_client.EXIT_USAGE
    assert "multi-user KFP; pass --namespace" in capsys.readouterr().err and not kfp.runs
    (tmp_path / "namespace").write_text("team-b\n")  # in a pod: its own namespace
    monkeypatch.setattr(kfp_client, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    assert _submit() == kfp_client.EXIT_SUCCEEDED
    assert [e["namespace"] for e in kfp.experiments.values()] == ["team-b"]


def test_in_a_cluster_the_projected_kfp_token_is_used(fake_kfp, monkeypatch, tmp_path):
    # sdk/python/kfp/client/__init__.py: KF_PIPELINES_SA_TOKEN_ENV / KF_PIPELINES_SA_TOKEN_PATH
    assert str(kfp_client.KFP_TOKEN_PATH) == "/var/run/secrets/kubeflow/pipelines/token"
    kfp = fake_kfp(token="projected-token")
    monkeypatch.delenv("KFP_TOKEN")
    assert _submit() == kfp_client.EXIT_UNREACHABLE and not kfp.runs  # no token anywhere: refused
    token = tmp_path / "token"
    token.write_text("projected-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))  # the SDK's variable for the file
    assert _submit() == kfp_client.EXIT_SUCCEEDED
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    monkeypatch.setattr(kfp_client, "KFP_TOKEN_PATH", token)  # the default path, /var/run/secrets/kubeflow/...
    assert _submit() == kfp_client.EXIT_SUCCEEDED
