"""Training logs to a real MLflow server: params, one curve point per logged step, artifacts; one run for
two processes; a server that is down does not stop training."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

import kubedistill
from kubedistill.devtools.mlflow_server import free_port

TRAIN = dict(
    model="torchvision/resnet18",
    method_args={"teacher": "dinov2/vits14", "teacher_weights": "none"},
    transform_args={"image_size": [28, 28]},
    num_workers=0,
    accelerator="cpu",
    log_every_n_steps=1,
    batch_size=16,
    epochs=2,
)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_logs_params_loss_curve_and_artifacts_as_a_nested_run(tmp_path, image_folder, mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment("train-tracking")
    parent = client.create_run(experiment, run_name="pipeline").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)
    out = tmp_path / "out"
    result = kubedistill.train(out=out, data=image_folder, mlflow={"tracking_uri": mlflow_server}, **TRAIN)

    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == run.info.run_id
    params = run.data.params
    assert params["model"] == "torchvision/resnet18" and params["method_args.teacher"] == "dinov2/vits14"
    assert params["batch_size"] == "16" and params["resolved.total_steps"] == str(result.steps)
    assert run.data.tags["kubedistill.student"] == "torchvision/resnet18"
    assert len(run.data.tags["kubedistill.config_hash"]) == 16

    records = _records(out)
    assert len(records) == result.steps == 8  # 64 images, batch 16, 2 epochs, logged every step
    for name in ("loss", "lr", "images_per_second"):
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in records], name
        assert [m.value for m in history] == [r[name] for r in records], name
    epochs = client.get_metric_history(run.info.run_id, "epoch_time_s")
    assert sorted(m.step for m in epochs) == [1, 2] and all(m.value > 0 for m in epochs)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "train.log", "metrics.jsonl", "exported"} <= artifacts
    exported = {a.path for a in client.list_artifacts(run.info.run_id, "exported")}
    assert exported == {"exported/student.pt", "exported/student.json", "exported/resnet18_backbone.pt"}
    log = Path(client.download_artifacts(run.info.run_id, "train.log", str(tmp_path))).read_text()
    assert "finished 8 steps" in log


def test_two_processes_make_exactly_one_run(tmp_path, image_folder, mlflow_server):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_", "MLFLOW_"))}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        f"--master-port={free_port()}", "-m", "kubedistill", "train", f"out={out}", f"data={image_folder}",
        "model=torchvision/resnet18", "method_args.teacher=dinov2/vits14", "method_args.teacher_weights=none",
        "transform_args.image_size=[28,28]", "num_workers=0", "accelerator=cpu", "log_every_n_steps=1",
        "batch_size=16", "epochs=1", f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment_name=two-procs",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("two-procs")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.params["resolved.world_size"] == "2"
    assert len(client.get_metric_history(runs[0].info.run_id, "loss")) == len(_records(out)) == 4


def test_unreachable_server_does_not_stop_training(tmp_path, image_folder):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    out = tmp_path / "out"
    mlflow = {"tracking_uri": closed, "connect_retries": 2, "connect_backoff_s": 0.05}
    result = kubedistill.train(out=out, data=image_folder, mlflow=mlflow, **{**TRAIN, "epochs": 1})
    assert result.steps == 4
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4]
    log = (out / "train.log").read_text()
    assert f"MLflow tracking is off for this train step: the MLflow server at {closed} is not reachable" in log
    assert "training continues without MLflow; metrics are written to" in log
    assert not (out / "mlflow_run.json").exists()


def test_a_resumed_training_adds_no_duplicate_curve_points(tmp_path, image_folder, mlflow_server):
    out = tmp_path / "out"
    mlflow = {"tracking_uri": mlflow_server, "experiment_name": "resumed-training"}
    kubedistill.train(out=out, data=image_folder, mlflow=mlflow, checkpoint_every_n_steps=4, **TRAIN)
    # As if the process died after logging step 8 but before its checkpoint: the newest one is step 4.
    checkpoints = out / "checkpoints"
    (checkpoints / "step-00000008.pt").unlink()
    (checkpoints / "last.pt").unlink()
    os.link(checkpoints / "step-00000004.pt", checkpoints / "last.pt")
    result = kubedistill.train(out=out, data=image_folder, mlflow=mlflow, checkpoint_every_n_steps=4,
                               resume_interrupted=True, **TRAIN)  # fmt: skip
    assert result.steps == 8 and not result.already_finished
    client = MlflowClient(mlflow_server)
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert len(client.search_runs([client.get_experiment_by_name("resumed-training").experiment_id])) == 1
    for name in ("loss", "lr", "images_per_second"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(1, 9)), name
    assert sorted(m.step for m in client.get_metric_history(run_id, "epoch_time_s")) == [1, 2]
    assert "has steps up to 8: the resumed run logs later steps only" in (out / "train.log").read_text()
