"""The cluster launcher against tests/kube/fake_api.py: an HTTP server speaking the Kubernetes API verbs the
launcher uses (no API server runs on these machines). The tests play the operator."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubedistill.kube.backends import get_backend
from kubedistill.kube.cluster import Cluster
from kubedistill.kube.launcher import KubeLauncher, Timeouts
from kubedistill.kube.settings import JobSettings
from kubedistill.launch import LaunchError, LaunchRequest

from .fake_api import FakeKubernetes

pytestmark = pytest.mark.timeout(90)

REQUEST = LaunchRequest(name="kd-run1", train_args={"out": "gs://b/o", "data": "gs://b/m.jsonl", "model": "m"},
                        nodes=2, procs_per_node=2)  # fmt: skip
SETTINGS = JobSettings(namespace="ml")
FAST = Timeouts(watch_s=1, reconnect_s=0.1)
SUCCEEDED = {"pytorchjob": "Succeeded", "trainjob": "Complete"}


@pytest.fixture
def fake():
    server = FakeKubernetes()
    yield server
    server.close()


def _cluster(fake: FakeKubernetes) -> Cluster:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = fake.url
    return Cluster(client.ApiClient(configuration))


def _launcher(fake, backend="pytorchjob", timeouts=FAST, output=None) -> KubeLauncher:
    return KubeLauncher(get_backend(backend), SETTINGS, cluster=_cluster(fake), timeouts=timeouts, output=output,
                        environ={})  # fmt: skip


def _labels(selector: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in selector.split(","))


def _operator(fake, backend: str, *, outcome: str, log: list[str], exit_code: int = 0, delay: float = 0.3):
    """What the training operator does after a create: pods, Running, the log, then the outcome."""
    kind = get_backend(backend)

    def act(job):
        name = job["metadata"]["name"]
        time.sleep(delay)
        fake.set_conditions(name, ("Created", "True", "JobCreated"))
        pod = f"{name}-node-0"
        fake.add_pod(pod, _labels(kind.rank0_selector(name)))
        fake.add_pod(f"{name}-node-1", _labels(kind.pod_selector(name)))
        fake.set_conditions(name, ("Created", "True", "JobCreated"), ("Running", "True", "JobRunning"))
        time.sleep(delay)
        fake.log(pod, *log, done=True)
        time.sleep(delay)
        if outcome == "failed":
            fake.add_pod(pod, _labels(kind.rank0_selector(name)), phase="Failed", exit_code=exit_code)
            fake.set_conditions(name, ("Running", "False", "JobRunning"),
                                ("Failed", "True", "JobFailed"), message=f"{name} failed: node 0 exited 1")  # fmt: skip
        else:
            fake.set_conditions(name, ("Running", "False", "JobRunning"), (SUCCEEDED[backend], "True", "JobSucceeded"))

    return act


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_success_streams_node_0s_log(fake, backend):
    fake.on_create = _operator(fake, backend, outcome="succeeded", log=["step 1/2 loss 3.1", "step 2/2 loss 2.9"])
    output = io.StringIO()
    _launcher(fake, backend, output=output).run(REQUEST)
    assert "step 1/2 loss 3.1\nstep 2/2 loss 2.9\n" in output.getvalue()
    assert fake.count("POST") == 1 and fake.count("DELETE") == 0
    created = fake.job("kd-run1")
    assert created["kind"] == get_backend(backend).kind and created["metadata"]["namespace"] == "ml"


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_a_failed_job_raises_with_the_reason_and_the_failing_pods_log(fake, backend):
    log = ["step 1/2 loss 3.1", "Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory"]
    fake.on_create = _operator(fake, backend, outcome="failed", log=log, exit_code=1)
    with pytest.raises(LaunchError) as error:
        _launcher(fake, backend, output=io.StringIO()).run(REQUEST)
    text = str(error.value)
    assert text.startswith(f"{get_backend(backend).kind} ml/kd-run1 failed: JobFailed: kd-run1 failed")
    assert "The last lines of kd-run1-node-0's log:" in text and "CUDA out of memory" in text
    assert fake.count("DELETE") == 0  # failed pods stay for their logs (cleanPodPolicy: Running)


def _existing(fake, backend: str, *conditions) -> None:
    job = get_backend(backend).build(REQUEST, SETTINGS, {})
    job["metadata"]["_plural"] = get_backend(backend).plural
    job["status"] = {"conditions": [{"type": t, "status": s, "reason": r} for t, s, r in conditions]}
    fake.put_job(job, "ADDED")


def test_409_adopts_a_running_job(fake):
    _existing(fake, "pytorchjob", ("Created", "True", "c"), ("Running", "True", "r"))
    kind = get_backend("pytorchjob")
    fake.add_pod("kd-run1-master-0", _labels(kind.rank0_selector("kd-run1")))
    fake.log("kd-run1-master-0", "step 7/10", done=True)

    def finish_later():
        time.sleep(0.5)
        fake.set_conditions("kd-run1", ("Running", "False", "r"), ("Succeeded", "True", "done"))

    import threading

    threading.Thread(target=finish_later, daemon=True).start()
    output = io.StringIO()
    _launcher(fake, output=output).run(REQUEST)
    assert fake.count("POST") == 1 and fake.count("DELETE") == 0  # one create (409), then followed
    assert "step 7/10" in output.getvalue()


def test_409_replaces_a_failed_job(fake):
    _existing(fake, "pytorchjob", ("Failed", "True", "BackoffLimitExceeded"))
    fake.on_create = _operator(fake, "pytorchjob", outcome="succeeded", log=["fresh start"])
    output = io.StringIO()
    _launcher(fake, output=output).run(REQUEST)
    assert fake.count("POST") == 2 and fake.count("DELETE") == 1
    assert "fresh start" in output.getvalue()


def test_timeout_deletes_the_job(fake):
    fake.on_create = lambda job: fake.set_conditions(job["metadata"]["name"], ("Running", "True", "r"))
    with pytest.raises(LaunchError, match=r"did not finish within 2 s: deleted"):
        _launcher(fake, timeouts=Timeouts(total_s=2, watch_s=1, reconnect_s=0.1), output=io.StringIO()).run(REQUEST)
    assert fake.count("DELETE") == 1


def test_pending_timeout_deletes_and_names_the_scheduling_reason(fake):
    kind = get_backend("pytorchjob")

    def unschedulable(job):
        name = job["metadata"]["name"]
        fake.add_pod(f"{name}-master-0", _labels(kind.rank0_selector(name)), phase="Pending")
        fake.add_event(f"{name}-master-0", "FailedScheduling",
                       "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")  # fmt: skip
        fake.set_conditions(name, ("Created", "True", "JobCreated"))

    fake.on_create = unschedulable
    with pytest.raises(LaunchError) as error:
        _launcher(fake, timeouts=Timeouts(pending_s=2, watch_s=1, reconnect_s=0.1), output=io.StringIO()).run(REQUEST)
    assert "did not start within 2 s: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in str(error.value)
    assert fake.count("DELETE") == 1


def test_a_watch_cut_mid_stream_and_a_410_are_survived(fake):
    fake.drop_watch_after = 1  # every watch stream ends after one event

    def operator(job):
        _operator(fake, "pytorchjob", outcome="succeeded", log=["done"], delay=0.4)(job)

    def expire_old_versions(job):
        time.sleep(0.2)
        fake.oldest_rv = fake.rv + 2  # the launcher's next resourceVersion will be too old: 410
        operator(job)

    fake.on_create = expire_old_versions
    _launcher(fake, output=io.StringIO()).run(REQUEST)
    watches = fake.count("GET", "watch=True")
    assert watches >= 3, f"only {watches} watch requests"
    assert fake.count("GET", "/pytorchjobs/kd-run1") >= 2  # the initial read, and the read after the 410


def test_sigterm_deletes_the_job_then_fails(fake, tmp_path):
    """KFP's Terminate: the launching process gets SIGTERM, deletes the job and exits non-zero."""
    fake.on_create = lambda job: fake.set_conditions(job["metadata"]["name"], ("Running", "True", "r"))
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
    assert "stopped by SIGTERM; the job was deleted" in output
    assert fake.count("DELETE", "/pytorchjobs/kd-run1") == 1
