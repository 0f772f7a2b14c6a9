"""The local launcher: real torchrun agents on 127.0.0.1 running `kubedistill train`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubedistill.errors import ConfigError
from kubedistill.launch import LaunchError, LaunchRequest, available_launchers, get_launcher
from kubedistill.launch.local import LocalLauncher, root_cause

from ..conftest import write_images

TINY = {
    "model": "torchvision/resnet18", "method_args": {"teacher": "dinov2/vits14", "teacher_weights": "none"},
    "transform_args": {"image_size": [28, 28]}, "num_workers": 0, "accelerator": "cpu", "log_every_n_steps": 1,
    "batch_size": 8, "epochs": 1,
}  # fmt: skip


def test_unknown_launchers_are_refused_with_the_valid_ones():
    assert available_launchers() == ["local", "pytorchjob", "trainjob"]
    with pytest.raises(ConfigError, match=r"unknown launcher 'k8s'; valid: local, pytorchjob, trainjob"):
        get_launcher("k8s")


def test_commands_one_agent_per_node_on_loopback():
    request = LaunchRequest(name="kd-1", train_args={"out": "/o", "data": "/d", "model": "m", "optim_args": {"lr": 0.5}},
                            nodes=2, procs_per_node=3)  # fmt: skip
    commands = LocalLauncher(python="py").commands(request, port=29999)
    assert len(commands) == 2
    for rank, command in enumerate(commands):
        assert command[:3] == ["py", "-m", "torch.distributed.run"]
        assert f"--node-rank={rank}" in command and "--nnodes=2" in command and "--nproc-per-node=3" in command
        assert "--master-addr=127.0.0.1" in command and "--master-port=29999" in command
        assert command[command.index("-m", 3):][:3] == ["-m", "kubedistill", "train"]
        assert "optim_args.lr=0.5" in command and "out=/o" in command


def test_environment_drops_an_enclosing_launch_and_shares_the_cores(monkeypatch):
    monkeypatch.setenv("PET_NNODES", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = LocalLauncher().environment(LaunchRequest(name="x", train_args={}, nodes=1, procs_per_node=2, env={"A": "b"}))
    assert "PET_NNODES" not in env and "RANK" not in env and env["A"] == "b"
    assert env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_root_cause_is_the_training_error_not_torchruns():
    log = "\n".join([
        "INFO starting", "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
        "kubedistill.errors.ConfigError: 1 configuration problem(s):", "  - method_args.queue_size: too big",
        "E1130 failed (exitcode: 1)", "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "====", "kubedistill FAILED",
    ])  # fmt: skip
    assert root_cause(log) == "kubedistill.errors.ConfigError: 1 configuration problem(s): - method_args.queue_size: too big"
    assert root_cause("all fine\n") is None


def test_bad_layouts_are_refused_before_anything_starts():
    with pytest.raises(ConfigError) as error:
        LocalLauncher().run(LaunchRequest(name="x", train_args={"out": "/o"}, nodes=0, procs_per_node=0))
    assert len(error.value.problems) == 4  # nodes, processes, data, model


def test_two_nodes_train_and_the_log_is_streamed(tmp_path):
    write_images(tmp_path / "images", 20)
    output = io.StringIO()
    request = LaunchRequest(name="kd-two-nodes", nodes=2, procs_per_node=1,
                            train_args={**TINY, "out": str(tmp_path / "run"), "data": str(tmp_path / "images")})  # fmt: skip
    LocalLauncher(output=output).run(request)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # 20 images, global batch 8
    assert (tmp_path / "run" / "exported" / "student.pt").is_file()
    assert "kubedistill: step 2/2" in output.getvalue()


def test_a_failing_job_raises_with_the_tail_of_its_log(tmp_path):
    request = LaunchRequest(name="kd-fails", train_args={**TINY, "out": str(tmp_path / "run"),
                                                          "data": str(tmp_path / "no-such-folder")})  # fmt: skip
    with pytest.raises(LaunchError) as error:
        LocalLauncher(output=io.StringIO()).run(request)
    first_line = str(error.value).splitlines()[0]
    assert first_line.startswith("kd-fails: node 0 exited with status 1: ")
    assert "no-such-folder" in first_line  # the cause first, then the log's tail


def test_sigterm_stops_the_training_processes(tmp_path):
    """KFP's Terminate sends SIGTERM to the task: the launcher stops torchrun and its workers, then fails."""
    write_images(tmp_path / "images", 20)
    train_args = {**TINY, "out": str(tmp_path / "run"), "data": str(tmp_path / "images"), "epochs": 1000}
    script = (
        "import sys, json; from kubedistill.launch import LaunchRequest; from kubedistill.launch.local import LocalLauncher, root_cause\n"
        f"LocalLauncher().run(LaunchRequest(name='kd-term', train_args=json.loads({json.dumps(json.dumps(train_args))})))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # fmt: skip
    metrics = Path(tmp_path / "run" / "metrics.jsonl")
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert metrics.is_file(), "training never started"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "stopped by SIGTERM" in output
    survivors = subprocess.run(["pgrep", "-f", str(tmp_path / "run")], capture_output=True, text=True).stdout.split()
    assert survivors == [], "training processes outlived the launcher"
