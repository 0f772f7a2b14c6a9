"""The cluster launcher against tests/kube/fake_api.py: an HTTP server speaking the Kubernetes API verbs the
launcher uses (no API server runs on these machines). The tests play the operators, writing what Training
Operator v1.9.0 and Trainer v2.3.0 write (the helpers in fake_api name the upstream files)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from kubedistill import cli
from kubedistill.kube.backends import get_backend
from kubedistill.kube.cluster import Cluster, Retry
from kubedistill.kube.launcher import KubeLauncher, Timeouts
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchError, LaunchRequest

from .fake_api import (
    FakeKubernetes,
    jobs_status,
    jobset_pod,
    pytorchjob_condition,
    pytorchjob_pod,
    running,
    terminated,
    trainjob_condition,
    waiting,
)  # fmt: skip

pytestmark = pytest.mark.timeout(90)

REQUEST = LaunchRequest(name="kd-run1", train_args={"out": "gs://b/o", "data": "gs://b/m.jsonl", "model": "m"},
                        nodes=2, procs_per_node=2)  # fmt: skip
SETTINGS = JobSettings(namespace="ml")
FAST = Timeouts(watch_s=1, reconnect_s=0.1, log_retry_s=0.1)
BACKENDS = ["pytorchjob", "trainjob"]
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."  # the scheduler's FailedScheduling message


@pytest.fixture
def fake():
    server = FakeKubernetes()
    yield server
    server.close()


def _cluster(fake: FakeKubernetes, retry: Retry | None = None) -> Cluster:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = fake.url
    return Cluster(client.ApiClient(configuration), retry=retry or Retry(attempts=4, first_s=0.05))


def _launcher(fake, backend="pytorchjob", *, settings=SETTINGS, timeouts=FAST, output=None, status=None,
              environ=None, retry=None) -> KubeLauncher:  # fmt: skip
    return KubeLauncher(get_backend(backend), settings, cluster=_cluster(fake, retry), timeouts=timeouts,
                        output=output or io.StringIO(), status=status or io.StringIO(), environ=environ or {})  # fmt: skip


# ---------------------------------------------------------------------- the operators, as upstream writes


def _node_pods(backend: str, name: str, nodes: int = 2) -> list[dict]:
    if backend == "pytorchjob":
        return [pytorchjob_pod(name, "master", 0)] + [pytorchjob_pod(name, "worker", i) for i in range(nodes - 1)]
    return [jobset_pod(name, i) for i in range(nodes)]


def _container(backend: str) -> str:
    return get_backend(backend).container


class Operator:
    """Plays Training Operator v1.9.0 (PyTorchJob) or Trainer v2.3.0 + JobSet (TrainJob) for one job."""

    def __init__(self, fake: FakeKubernetes, backend: str, name: str = "kd-run1"):
        self.fake, self.backend, self.name = fake, backend, name
        self.pods = _node_pods(backend, name)
        self.node0 = self.pods[0]["metadata"]["name"]

    def created(self) -> None:
        """Pods created, not scheduled yet: PyTorchJob Created; TrainJob no condition, its child Job active."""
        for pod in self.pods:
            self.fake.put_pod(pod, "Pending")
        if self.backend == "pytorchjob":
            self.fake.set_status(self.name, {"conditions": [pytorchjob_condition("Created", self.name)]})
        else:
            self.fake.set_status(self.name, {"jobsStatus": jobs_status("node", active=1)})

    def running(self) -> None:
        for pod in self.pods:
            self.fake.put_pod(pod, "Running", [running(_container(self.backend))])
        if self.backend == "pytorchjob":
            self.fake.set_status(self.name, {"conditions": [pytorchjob_condition("Created", self.name),
                                                            pytorchjob_condition("Running", self.name)]})  # fmt: skip
        else:  # no Running condition upstream: only the counts of ready child Jobs
            self.fake.set_status(self.name, {"jobsStatus": jobs_status("node", active=1, ready=1)})

    def finished(self, exit_code: int = 0) -> None:
        pod_phase = "Succeeded" if exit_code == 0 else "Failed"
        self.fake.put_pod(self.pods[0], pod_phase, [terminated(_container(self.backend), exit_code)])
        outcome = "Succeeded" if exit_code == 0 else "Failed"
        if self.backend == "pytorchjob":
            self.fake.set_status(self.name, {"conditions": [
                pytorchjob_condition("Created", self.name), pytorchjob_condition("Running", self.name, "False"),
                pytorchjob_condition(outcome, self.name)]})  # fmt: skip
        else:
            counts = {"succeeded": 1} if exit_code == 0 else {"failed": 1}
            self.fake.set_status(self.name, {"conditions": [trainjob_condition("Complete" if exit_code == 0 else "Failed")],
                                             "jobsStatus": jobs_status("node", **counts)})  # fmt: skip


def _play(fake, backend, *, log, exit_code=0, delay=0.3, run_s=0.0):
    """What the operator does after a create: pods, running, node 0's log, then the outcome."""

    def act(job):
        operator = Operator(fake, backend, job["metadata"]["name"])
        time.sleep(delay)
        operator.created()
        time.sleep(delay)
        operator.running()
        for line in log:
            fake.log(operator.node0, line)
            time.sleep(run_s / max(len(log), 1))
        fake.log(operator.node0, done=True)
        time.sleep(delay)
        operator.finished(exit_code)

    return act


# ---------------------------------------------------------------------- following a job


@pytest.mark.parametrize("backend", BACKENDS)
def test_success_streams_node_0s_log_and_says_each_state(fake, backend):
    fake.on_create = _play(fake, backend, log=["step 1/2 loss 3.1", "step 2/2 loss 2.9"])
    output, status = io.StringIO(), io.StringIO()
    _launcher(fake, backend, output=output, status=status).run(REQUEST)
    assert output.getvalue() == "step 1/2 loss 3.1\nstep 2/2 loss 2.9\n"  # node 0's log, each line once
    assert fake.count("POST") == 1 and fake.count("DELETE") == 0
    created = fake.job("kd-run1")
    assert created["kind"] == get_backend(backend).kind and created["metadata"]["namespace"] == "ml"
    said = status.getvalue()
    kind = get_backend(backend).kind
    for line in (f"created {kind} ml/kd-run1", f"{kind} ml/kd-run1 is pending", f"{kind} ml/kd-run1 is running",
                 f"{kind} ml/kd-run1 is succeeded"):  # fmt: skip
        assert line in said, said
    if backend == "trainjob":
        assert "is succeeded: AllJobsCompleted: jobset completed successfully" in said


def test_a_trainjob_running_longer_than_the_pending_timeout_is_followed_to_the_end(fake):
    """Trainer v2.3 never sets a Running condition: a TrainJob that trains for 4 s with a 1.5 s pending timeout is
    running (jobsStatus ready), not deleted as 'did not start'."""
    lines = [f"step {i}/12" for i in range(1, 13)]
    fake.on_create = _play(fake, "trainjob", log=lines, delay=0.2, run_s=4.0)
    output, status = io.StringIO(), io.StringIO()
    settings = JobSettings(namespace="ml", pending_timeout=1.5)
    _launcher(fake, "trainjob", settings=settings, output=output, status=status).run(REQUEST)
    assert output.getvalue().splitlines() == lines
    assert fake.count("DELETE") == 0 and fake.has_job("kd-run1")
    assert "TrainJob ml/kd-run1 is running: node: 1 ready" in status.getvalue()


def test_a_trainjob_whose_node_0_runs_is_running_while_another_node_waits(fake):
    """jobsStatus counts a child Job ready only when all its pods are; node 0 Running is enough to be running."""
    settings = JobSettings(namespace="ml", pending_timeout=1)
    output, status = io.StringIO(), io.StringIO()

    def act(job):
        pods = _node_pods("trainjob", "kd-run1")
        fake.put_pod(pods[0], "Running", [running("node")])
        fake.put_pod(pods[1], "Pending")
        fake.set_status("kd-run1", {"jobsStatus": jobs_status("node", active=1)})
        fake.log(pods[0]["metadata"]["name"], "rendezvous: waiting for node 1")
        time.sleep(2.5)  # longer than the pending timeout
        fake.log(pods[0]["metadata"]["name"], "done", done=True)
        fake.set_status("kd-run1", {"conditions": [trainjob_condition("Complete")], "jobsStatus": jobs_status("node", succeeded=1)})

    fake.on_create = act
    _launcher(fake, "trainjob", settings=settings, output=output, status=status).run(REQUEST)
    assert output.getvalue() == "rendezvous: waiting for node 1\ndone\n"
    assert "is running: node 0's pod is Running" in status.getvalue() and fake.count("DELETE") == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_job_raises_with_the_reason_and_the_failing_pods_log(fake, backend):
    log = ["step 1/2 loss 3.1", "Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory"]
    fake.on_create = _play(fake, backend, log=log, exit_code=1)
    with pytest.raises(LaunchError) as error:
        _launcher(fake, backend).run(REQUEST)
    text = str(error.value)
    reason = ("PyTorchJobFailed: PyTorchJob kd-run1 is failed" if backend == "pytorchjob"
              else "FailedJobs: jobset failed due to one or more job failures")  # fmt: skip
    assert text.startswith(f"{get_backend(backend).kind} ml/kd-run1 failed: {reason}")
    node0 = _node_pods(backend, "kd-run1")[0]["metadata"]["name"]
    assert f"The last lines of {node0}'s log:" in text and "CUDA out of memory" in text
    assert fake.count("DELETE") == 0  # failed pods stay for their logs (cleanPodPolicy: Running)


def test_node_0s_log_is_followed_again_after_the_stream_breaks(fake):
    """The kubelet or API server drops the log stream mid-run: it is followed again from the last line printed,
    each line once (several lines share a timestamp here)."""
    lines = [f"step {i}" for i in range(1, 9)]
    output, status = io.StringIO(), io.StringIO()

    def act(job):
        operator = Operator(fake, "pytorchjob")
        operator.created()
        fake.break_log(operator.node0, after_lines=3)
        fake.log(operator.node0, *lines[:5])  # one burst: shared timestamps are possible
        operator.running()
        time.sleep(1.0)
        fake.log(operator.node0, *lines[5:], done=True)
        time.sleep(0.5)
        operator.finished()

    fake.on_create = act
    _launcher(fake, output=output, status=status).run(REQUEST)
    assert output.getvalue().splitlines() == lines
    assert fake.count("GET", "/log?") >= 2 and "following it again" in status.getvalue()
    assert "sinceSeconds=" in [p for m, p in fake.requests if "/log?" in p][-1]


def test_timestamps_sort_by_value_not_text():
    """The kubelet trims trailing zeros (RFC3339Nano): .5Z is after .12Z."""
    from kubedistill.kube.logs import Position, split_stamp

    assert split_stamp("2026-01-01T00:00:01.5Z x")[0] > split_stamp("2026-01-01T00:00:01.12Z y")[0]
    position = Position()
    assert [position.accept(line) for line in ("2026-01-01T00:00:01.12Z a", "2026-01-01T00:00:01.5Z b")] == ["a", "b"]
    position.new_stream()  # followed again: the same two lines come back, then a new one
    again = ["2026-01-01T00:00:01.12Z a", "2026-01-01T00:00:01.5Z b", "2026-01-01T00:00:01.5Z c"]
    assert [position.accept(line) for line in again] == [None, None, "c"]


# ---------------------------------------------------------------------- pending, queued, stuck


@pytest.mark.parametrize("backend", BACKENDS)
def test_pending_timeout_deletes_and_names_the_scheduling_reason(fake, backend):
    def unschedulable(job):
        operator = Operator(fake, backend)
        operator.created()
        fake.add_event("Pod", operator.node0, "FailedScheduling", UNSCHEDULABLE)

    fake.on_create = unschedulable
    status = io.StringIO()
    with pytest.raises(LaunchError) as error:
        _launcher(fake, backend, settings=JobSettings(namespace="ml", pending_timeout=2), status=status).run(REQUEST)
    assert f"did not start within pending_timeout=2 s: FailedScheduling: {UNSCHEDULABLE}" in str(error.value)
    assert fake.count("DELETE") == 1 and not fake.has_job("kd-run1")
    assert f"is pending: Pod {Operator(fake, backend).node0}: FailedScheduling: {UNSCHEDULABLE}" in status.getvalue()


def test_a_suspended_trainjob_is_pending_and_said_to_be_queued(fake):
    fake.on_create = lambda job: fake.set_status("kd-run1", {"conditions": [trainjob_condition("Suspended")]})
    status = io.StringIO()
    with pytest.raises(LaunchError, match="did not start within pending_timeout=1 s"):
        _launcher(fake, "trainjob", settings=JobSettings(namespace="ml", pending_timeout=1), status=status).run(REQUEST)
    said = status.getvalue()
    assert "is pending: suspended (Suspended: TrainJob is suspended): queued until a queue admits it" in said
    assert "kubectl get workloads -n ml" in said and fake.count("DELETE") == 1


def test_a_child_jobs_failed_create_is_a_pending_reason(fake):
    """A missing service account: the Job controller cannot create the pods and says so on the child Job."""
    message = ('pods "kd-run1-node-0-0-" is forbidden: error looking up service account ml/kubedistill-trainer: '
               'serviceaccount "kubedistill-trainer" not found')  # fmt: skip
    fake.on_create = lambda job: fake.add_event("Job", "kd-run1-node-0", "FailedCreate", message)
    with pytest.raises(LaunchError) as error:
        _launcher(fake, "trainjob", settings=JobSettings(namespace="ml", pending_timeout=1)).run(REQUEST)
    assert f"FailedCreate: {message}" in str(error.value)


STUCK = [
    ("ImagePullBackOff", 'Back-off pulling image "r.example/trainer:1"', "containers"),
    ("CreateContainerConfigError", 'couldn\'t find key MLFLOW_TRACKING_TOKEN in Secret ml/mlflow', "containers"),
    ("CrashLoopBackOff", "back-off 5m0s restarting failed container", "init"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("reason", "message", "where"), STUCK)
def test_a_stuck_container_fails_fast_and_deletes_the_job(fake, backend, reason, message, where):
    def stuck(job):
        operator = Operator(fake, backend)
        operator.created()
        status = waiting(_container(backend) if where == "containers" else "init", reason, message)
        if where == "containers":
            fake.put_pod(operator.pods[1], "Pending", [status])
        else:
            fake.put_pod(operator.pods[1], "Pending", [], init_containers=[status])

    fake.on_create = stuck
    timeouts = Timeouts(container_grace_s=1, watch_s=1, reconnect_s=0.1)
    started = time.monotonic()
    with pytest.raises(LaunchError) as error:
        _launcher(fake, backend, timeouts=timeouts).run(REQUEST)  # pending_timeout: the default 30 min
    assert time.monotonic() - started < 20
    pod = _node_pods(backend, "kd-run1")[1]["metadata"]["name"]
    container = _container(backend) if where == "containers" else "init"
    assert f"pod {pod}, container {container} is stuck in {reason}: {message}" in str(error.value)
    assert str(error.value).endswith("The job was deleted")
    assert fake.count("DELETE") == 1 and not fake.has_job("kd-run1")


def test_a_stuck_reason_that_clears_within_the_grace_is_survived(fake):
    def flaky_pull(job):
        operator = Operator(fake, "pytorchjob")
        operator.created()
        fake.put_pod(operator.pods[0], "Pending", [waiting("pytorch", "ErrImagePull", "i/o timeout")])
        time.sleep(1.0)
        operator.running()
        fake.log(operator.node0, "pulled after all", done=True)
        operator.finished()

    fake.on_create = flaky_pull
    output, status = io.StringIO(), io.StringIO()
    _launcher(fake, timeouts=Timeouts(container_grace_s=5, watch_s=1), output=output, status=status).run(REQUEST)
    assert output.getvalue() == "pulled after all\n" and fake.count("DELETE") == 0
    assert "container pytorch: ErrImagePull: i/o timeout (the job is deleted unless it recovers within 5 s)" in status.getvalue()


def test_the_cli_prints_the_pending_reason_on_stderr(fake, tmp_path, monkeypatch, capsys):
    """`kubedistill launch` against the stand-in (a kubeconfig pointing at it): the scheduler's reason is on
    stderr while the job waits, before the pending timeout's error."""
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    for variable in ("KUBERNETES_SERVICE_HOST", "KFP_POD_NAME", "KFP_POD_UID", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(variable, raising=False)

    def unschedulable(job):
        operator = Operator(fake, "trainjob", "kd-cli")
        operator.created()
        fake.add_event("Pod", operator.node0, "FailedScheduling", UNSCHEDULABLE)

    fake.on_create = unschedulable
    code = cli.main(["launch", "backend=trainjob", "namespace=ml", "name=kd-cli", "pending_timeout=2",
                     "out=gs://b/o", "data=gs://b/m.jsonl", "model=torchvision/resnet18"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    pending = [line for line in err.splitlines() if " launcher: " in line and "is pending: Pod" in line]
    assert pending and f"FailedScheduling: {UNSCHEDULABLE}" in pending[0], err
    assert "created TrainJob ml/kd-cli" in err and "deleting TrainJob ml/kd-cli" in err
    assert "kubedistill launch: error: TrainJob ml/kd-cli did not start within pending_timeout=2 s" in err


# ---------------------------------------------------------------------- adopting, owning


def _existing(fake, backend: str, status: dict, owners: list | None = None) -> None:
    job = get_backend(backend).build(REQUEST, SETTINGS, {})
    job["metadata"]["_plural"] = get_backend(backend).plural
    job["metadata"]["ownerReferences"] = owners or []
    job["status"] = status
    fake.put_job(job, "ADDED")


def test_409_adopts_a_running_job(fake):
    _existing(fake, "pytorchjob", {"conditions": [pytorchjob_condition("Created", "kd-run1"),
                                                  pytorchjob_condition("Running", "kd-run1")]})  # fmt: skip
    operator = Operator(fake, "pytorchjob")
    fake.put_pod(operator.pods[0], "Running", [running("pytorch")])
    fake.log(operator.node0, "step 7/10", done=True)
    threading.Timer(0.5, operator.finished).start()
    output, status = io.StringIO(), io.StringIO()
    _launcher(fake, output=output, status=status).run(REQUEST)
    assert fake.count("POST") == 1 and fake.count("DELETE") == 0  # one create (409), then followed
    assert output.getvalue() == "step 7/10\n"
    assert "PyTorchJob ml/kd-run1 exists and is running (PyTorchJobRunning: PyTorchJob kd-run1 is running.)" in status.getvalue()


def test_409_replaces_a_failed_job(fake):
    _existing(fake, "pytorchjob", {"conditions": [pytorchjob_condition("Failed", "kd-run1")]})
    fake.on_create = _play(fake, "pytorchjob", log=["fresh start"])
    output = io.StringIO()
    _launcher(fake, output=output).run(REQUEST)
    assert fake.count("POST") == 2 and fake.count("DELETE") == 1
    assert output.getvalue() == "fresh start\n"


WORKFLOW = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "distill-pipeline-x7k2p",
            "uid": "wf-uid-1", "controller": True, "blockOwnerDeletion": True}  # fmt: skip


def _kfp_pod(fake, name: str, uid: str, namespace: str = "ml") -> dict:
    """A KFP task pod: Argo makes the run's Workflow its controller (argo-workflows
    workflow/controller/workflowpod.go, metav1.NewControllerRef(woc.wf, ...Workflow))."""
    pod = {"metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": {"workflows.argoproj.io/workflow": WORKFLOW["name"]},
                        "ownerReferences": [WORKFLOW]}, "status": {"phase": "Running"}}  # fmt: skip
    fake.put_pod(pod)
    return {"KFP_POD_NAME": name, "KFP_POD_UID": uid, "POD_NAMESPACE": namespace}


def test_the_job_is_owned_by_the_runs_workflow_not_the_launching_pod(fake):
    environ = _kfp_pod(fake, "distill-pipeline-x7k2p-system-container-impl-1", "pod-uid-1")
    fake.on_create = _play(fake, "pytorchjob", log=["ok"])
    status = io.StringIO()
    _launcher(fake, environ=environ, status=status).run(REQUEST)
    (owner,) = fake.job("kd-run1")["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "distill-pipeline-x7k2p",
                     "uid": "wf-uid-1", "controller": False, "blockOwnerDeletion": False}  # fmt: skip
    assert "the job is owned by Workflow distill-pipeline-x7k2p" in status.getvalue()


def test_retry_run_adopts_the_running_job_and_follows_it_to_the_end(fake):
    """KFP's "Retry run" deleted the failed launcher pod and started a new one in the same Workflow: the job,
    owned by the Workflow, trains on; the new pod adopts it (same name) and follows it to the end."""
    _existing(fake, "trainjob", {"jobsStatus": jobs_status("node", active=1, ready=1)},
              owners=[{**WORKFLOW, "controller": False, "blockOwnerDeletion": False}])  # fmt: skip
    operator = Operator(fake, "trainjob")
    for pod in operator.pods:
        fake.put_pod(pod, "Running", [running("node")])
    fake.log(operator.node0, "step 41/100")
    environ = _kfp_pod(fake, "distill-pipeline-x7k2p-system-container-impl-2", "pod-uid-2")

    def finish():
        fake.log(operator.node0, "step 100/100", done=True)
        operator.finished()

    threading.Timer(1.0, finish).start()
    output = io.StringIO()
    _launcher(fake, "trainjob", settings=JobSettings(namespace="ml", pending_timeout=0.5), output=output,
              environ=environ).run(REQUEST)  # fmt: skip
    assert output.getvalue() == "step 41/100\nstep 100/100\n"
    assert fake.count("POST") == 1 and fake.count("DELETE") == 0
    assert fake.job("kd-run1")["metadata"]["ownerReferences"][0]["kind"] == "Workflow"


def test_no_owner_reference_across_namespaces(fake):
    environ = {"KFP_POD_NAME": "p", "KFP_POD_UID": "u", "POD_NAMESPACE": "kubeflow"}  # the job goes to ml
    fake.on_create = _play(fake, "pytorchjob", log=["ok"])
    status = io.StringIO()
    _launcher(fake, environ=environ, status=status).run(REQUEST)
    assert not fake.job("kd-run1")["metadata"].get("ownerReferences")
    assert "no owner for the job: it runs in namespace ml, this pod in kubeflow" in status.getvalue()
    assert fake.count("GET", "/pods/p") == 0


def test_an_unreadable_launching_pod_owns_the_job_itself_and_says_why(fake):
    environ = _kfp_pod(fake, "launcher-pod", "pod-uid-9")
    fake.fail("GET", "/pods/launcher-pod", 403, times=None)
    fake.on_create = _play(fake, "pytorchjob", log=["ok"])
    status = io.StringIO()
    _launcher(fake, environ=environ, status=status).run(REQUEST)
    (owner,) = fake.job("kd-run1")["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "launcher-pod", "pod-uid-9")
    assert "a KFP 'Retry run', which deletes the failed pod, deletes the job too" in status.getvalue()


# ---------------------------------------------------------------------- API errors, launcher errors, stops


def test_transient_api_errors_are_retried_everywhere(fake):
    fake.fail("POST", "/pytorchjobs", 503)
    fake.fail("GET", "/pytorchjobs/kd-run1", 429)
    fake.fail("GET", "/pods?", 500, times=2)
    fake.fail("GET", "/events", 502)
    fake.watch_errors.append({"kind": "Status", "status": "Failure", "code": 500, "message": "etcdserver: request timed out"})
    fake.on_create = _play(fake, "pytorchjob", log=["survived"])
    output = io.StringIO()
    _launcher(fake, output=output).run(REQUEST)
    assert output.getvalue() == "survived\n" and fake.count("POST") == 2 and fake.count("DELETE") == 0


def test_a_launcher_error_deletes_the_job(fake):
    fake.on_create = lambda job: Operator(fake, "pytorchjob").running()
    fake.fail("GET", "/pods?", 403, times=None)  # the Role lost "list pods": the launcher cannot follow
    with pytest.raises(LaunchError) as error:
        _launcher(fake).run(REQUEST)
    assert "PyTorchJob ml/kd-run1: the launcher failed: could not list pods" in str(error.value)
    assert str(error.value).endswith("the job was deleted")
    assert fake.count("DELETE") == 1 and not fake.has_job("kd-run1")


def test_a_launcher_error_that_cannot_delete_says_how_to(fake):
    fake.on_create = lambda job: Operator(fake, "trainjob").running()
    fake.fail("GET", "/pods?", 500, times=None)  # the API stays away beyond the retries
    fake.fail("DELETE", "/trainjobs/kd-run1", 500, times=None)
    with pytest.raises(LaunchError) as error:
        _launcher(fake, "trainjob", retry=Retry(attempts=3, first_s=0.01)).run(REQUEST)
    text = str(error.value)
    assert "Deleting the job failed too" in text and "it may still be running" in text
    assert text.endswith("Delete it with: kubectl delete trainjobs.trainer.kubeflow.org -n ml kd-run1")
    assert fake.has_job("kd-run1") and fake.count("DELETE") == 3


def test_timeout_deletes_the_job(fake):
    fake.on_create = lambda job: Operator(fake, "pytorchjob").running()
    with pytest.raises(LaunchError, match=r"did not finish within 2 s \(timeout\): deleted"):
        _launcher(fake, settings=JobSettings(namespace="ml", timeout=2)).run(REQUEST)
    assert fake.count("DELETE") == 1


def test_a_watch_cut_mid_stream_and_a_410_are_survived(fake):
    fake.drop_watch_after = 1  # every watch stream ends after one event
    play = _play(fake, "pytorchjob", log=["done"], delay=0.4)

    def expire_old_versions(job):
        time.sleep(0.2)
        fake.oldest_rv = fake.rv + 2  # the launcher's next resourceVersion will be too old: 410
        play(job)

    fake.on_create = expire_old_versions
    _launcher(fake).run(REQUEST)
    watches = fake.count("GET", "watch=True")
    assert watches >= 3, f"only {watches} watch requests"
    assert fake.count("GET", "/pytorchjobs/kd-run1") >= 2  # the initial read, and the read after the 410


def test_sigterm_deletes_the_job_then_fails(fake, tmp_path):
    """KFP's Terminate: the launching process gets SIGTERM, deletes the job and exits non-zero."""
    fake.on_create = lambda job: Operator(fake, "pytorchjob").running()
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from kubernetes import client
from kubedistill.kube.backends import get_backend
from kubedistill.kube.cluster import Cluster
from kubedistill.kube.launcher import KubeLauncher, Timeouts
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchRequest
c = client.Configuration(); c.host = {fake.url!r}
request = LaunchRequest(name="kd-run1", train_args={json.dumps(dict(REQUEST.train_args))}, nodes=2, procs_per_node=2)
KubeLauncher(get_backend("pytorchjob"), JobSettings(namespace="ml"), cluster=Cluster(client.ApiClient(c)),
             timeouts=Timeouts(watch_s=1), environ={{}}).run(request)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while fake.count("GET", "watch=True") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "stopped by SIGTERM (KFP Terminate, or the pod is being stopped); the job was deleted" in output
    assert "launcher: deleting PyTorchJob ml/kd-run1" in output  # said on stderr as it happens
    assert fake.count("DELETE", "/pytorchjobs/kd-run1") == 1


# ---------------------------------------------------------------------- what the launcher may do


def _permission(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource, verb) the API server checks for a request (RBAC's request attributes)."""
    from urllib.parse import urlparse

    url = urlparse(path)
    parts = url.path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[parts.index("namespaces") + 2 :]
    resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    if method == "GET":
        verb = "watch" if "watch=True" in url.query else "get" if len(rest) > 1 else "list"
    else:
        verb = {"POST": "create", "DELETE": "delete"}[method]
    return group, resource, verb


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_launchers_role_grants_every_request_it_makes(fake, backend):
    """manifests/base/rbac/role.yaml against the requests of a run that reads the launching pod, reports a
    pending reason, follows the log, fails (the failing pod's log tail), and a retry that replaces the failed job."""
    environ = _kfp_pod(fake, "launcher-pod", "pod-uid-3")

    def act(job):
        operator = Operator(fake, backend)
        operator.created()
        fake.add_event("Pod", operator.node0, "FailedScheduling", UNSCHEDULABLE)
        _play(fake, backend, log=["step 1"], exit_code=1, delay=0.1)(job)

    fake.on_create = act
    for _ in range(2):  # the second run meets the failed job (409), deletes it and creates it again
        with pytest.raises(LaunchError, match="failed"):
            _launcher(fake, backend, environ=environ).run(REQUEST)
    role = yaml.safe_load((Path(__file__).resolve().parents[2] / "manifests/base/rbac/role.yaml").read_text())
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    made = {_permission(method, path) for method, path in fake.requests}
    group = get_backend(backend).group
    plural = get_backend(backend).plural
    assert {(group, plural, v) for v in ("create", "get", "watch", "delete")} <= made
    assert {("", "pods", "get"), ("", "pods", "list"), ("", "pods/log", "get"), ("", "events", "list")} <= made
    assert made <= granted, made - granted
