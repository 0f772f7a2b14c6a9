"""End-to-end training on CPU with a small random teacher: the output layout, export, failures, reuse of out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import kubedistill
from kubedistill.config import build_train_config
from kubedistill.errors import ConfigError, DataError, OutputDirError
from kubedistill.models.students import build_student
from kubedistill.training.checkpoint import load_checkpoint
from kubedistill.training.trainer import Trainer

from ..conftest import TINY_RUN, native_bf16

FAST = TINY_RUN


def _train(out: Path, data: Path, **overrides):
    return kubedistill.train(out=out, data=data, **{**FAST, **overrides})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_the_layout_and_export_matches_training_weights(tmp_path, image_folder):
    out = tmp_path / "run"
    result = _train(out, image_folder, epochs=2, log_every_n_steps=4, checkpoint_every_n_steps=5)
    assert result.steps == 16  # 64 images / batch 8 x 2 epochs
    for name in ("config.yaml", "train.log", "metrics.jsonl", "checkpoints/last.pt", "exported/student.pt"):
        assert (out / name).is_file(), name
    # Periodic checkpoints at steps 5, 10, 15 and the final one at 16; the newest 3 are kept.
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*.pt")) == [
        "step-00000010.pt", "step-00000015.pt", "step-00000016.pt",
    ]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["resolved"]["queue_size"] == 32  # 64 images -> the <100 bucket
    assert config["resolved"]["total_steps"] == 16
    assert config["optim_args"]["lr"] == 1.8 and config["optim"] == "lars"

    records = _metrics(out)
    assert [r["step"] for r in records] == [4, 8, 12, 16]
    assert [r["epoch"] for r in records] == [0, 0, 1, 1]
    assert set(records[0]) == {"step", "epoch", "loss", "lr", "images_per_second"}
    assert all(r["loss"] > 0 and r["images_per_second"] > 0 for r in records)
    assert "step 16/16 loss" in (out / "train.log").read_text()

    # The exported student gives the same features as the trained weights in the final checkpoint.
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 16
    trained = build_student("torchvision/resnet18")
    trained.load_state_dict({k.removeprefix("student."): v for k, v in state["model"].items() if k.startswith("student.")})
    loaded = kubedistill.load_student(out / "exported" / "student.pt")
    assert loaded.metadata.image_size == (28, 28) and loaded.feature_dim == 512
    assert not loaded.training
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(images), trained.eval()(images), atol=1e-6)
    meta = json.loads((out / "exported" / "student.json").read_text())
    assert meta["model"] == "torchvision/resnet18" and meta["normalize"]["mean"] == [0.485, 0.456, 0.406]


def test_epoch_ends_are_checkpointed(tmp_path, image_folder, monkeypatch):
    monkeypatch.setattr("kubedistill.training.trainer.EPOCH_END_MIN_INTERVAL_S", 0.0)
    out = tmp_path / "run"
    _train(out, image_folder, epochs=3, checkpoint_every_n_steps=100)
    # 8 steps per epoch: the ends of epochs 1 and 2, then the final checkpoint.
    names = sorted(p.name for p in (out / "checkpoints").glob("step-*.pt"))
    assert names == ["step-00000008.pt", "step-00000016.pt", "step-00000024.pt"]
    state = load_checkpoint(out / "checkpoints" / "step-00000008.pt")
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 0)


def test_corrupt_image_is_skipped_and_counted(tmp_path, image_folder):
    bad = image_folder / "part0" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 3)
    result = _train(tmp_path / "run", image_folder, epochs=1)
    assert result.steps == 8 and result.failed_images == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"skipped unreadable image {bad}" in log


def test_too_many_corrupt_images_stop_the_run_with_a_clear_error(tmp_path, image_folder):
    for i in range(8):
        (image_folder / f"broken{i}.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="could not be decoded.*max_bad_fraction=0.05"):
        _train(tmp_path / "run", image_folder, epochs=1)


def test_non_empty_out_is_refused_then_overwritten_or_resumed(tmp_path, image_folder):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty.*overwrite=true"):
        _train(out, image_folder, epochs=1)
    _train(out, image_folder, epochs=1, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # overwrite removes only a run's own files
    first = (out / "exported" / "student.pt").read_bytes()

    # Resuming a finished run does nothing and succeeds (a restarted pod after completion must not fail).
    result = _train(out, image_folder, epochs=1, resume_interrupted=True)
    assert result.already_finished and result.steps == 8
    assert (out / "exported" / "student.pt").read_bytes() == first


def test_checkpoint_starts_a_new_run_from_earlier_weights(tmp_path, image_folder):
    first = tmp_path / "first"
    _train(first, image_folder, epochs=1)
    second = tmp_path / "second"
    _train(second, image_folder, max_steps=1, checkpoint=first / "exported" / "student.pt", log_every_n_steps=1)
    # After one step at a tiny warmup lr the weights are still close to the first run's, far from a fresh init.
    a = kubedistill.load_student(first / "exported" / "student.pt").student.state_dict()
    b = kubedistill.load_student(second / "exported" / "student.pt").student.state_dict()
    fresh = build_student("torchvision/resnet18").state_dict()
    key = "backbone.conv1.weight"
    assert (a[key] - b[key]).abs().max() < 0.1 * (a[key] - fresh[key]).abs().max()


def test_bad_arguments_are_reported_together_before_any_work(tmp_path, image_folder):
    with pytest.raises(ConfigError) as info:
        kubedistill.train(out=tmp_path / "run", data=image_folder, model="torchvision/resnet18", epochs=0, seed="x")
    assert len(info.value.problems) == 2
    assert not (tmp_path / "run").exists()


def test_too_few_images_for_the_auto_queue_say_what_to_do(tmp_path):
    from ..conftest import write_images

    write_images(tmp_path / "images", 16)
    with pytest.raises(ConfigError, match=r"queue_size: 16 must be smaller than the number of images \(16\); "
                                          r"queue_size=auto needs at least 17 images: add images"):  # fmt: skip
        _train(tmp_path / "run", tmp_path / "images", max_steps=1)


def test_queue_larger_than_dataset_is_an_error(tmp_path, image_folder):
    with pytest.raises(ConfigError, match="queue_size: 64 must be smaller than the number of images \\(64\\)"):
        _train(tmp_path / "run", image_folder, epochs=1, method_args={**FAST["method_args"], "queue_size": 64})


def _world_problems(world_size: int, local: int, **overrides) -> list[str]:
    from kubedistill.training.distributed import ProcessInfo

    trainer = Trainer(build_train_config({"out": "o", "data": "d", "model": "torchvision/resnet18", **overrides}))
    trainer.proc = ProcessInfo(rank=0, world_size=world_size, local_rank=0, local_world_size=local)
    try:
        trainer._check_world()
    except ConfigError as e:
        return e.problems
    return []


def test_global_batch_must_split_evenly_over_processes():
    assert _world_problems(2, 1, batch_size=16) == []
    problems = _world_problems(4, 2, batch_size=30)
    assert problems == ["batch_size: the global batch 30 is not divisible by the world size 4"]


def test_several_nodes_without_a_launcher_explain_how_to_launch():
    problems = _world_problems(1, 1, devices=2, num_nodes=2)
    assert len(problems) == 1 and "torchrun --nnodes=2 --nproc-per-node=<devices> -m kubedistill train" in problems[0]
    assert _world_problems(1, 1, devices=2) == []  # one node: train() starts the processes itself


def test_devices_2_starts_two_processes_without_torchrun(tmp_path, monkeypatch):
    """What a LightlyTrain user does: devices=2 from Python, no torchrun; gloo on the CPU."""
    from ..conftest import write_images

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    write_images(tmp_path / "images", 40)
    result = _train(tmp_path / "run", tmp_path / "images", devices=2, batch_size=8, max_steps=3, log_every_n_steps=1)
    assert result.steps == 3 and result.exported.is_file()
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert (resolved["world_size"], resolved["per_device_batch_size"]) == (2, 4)
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2, 3]  # rank 0 alone writes


@pytest.mark.parametrize(("precision", "bf16"), [pytest.param("bf16-mixed", True, marks=native_bf16), ("32-true", False)])
def test_bf16_runs_the_student_channels_last_and_stores_the_frozen_teacher_in_bf16(tmp_path, image_folder, precision,
                                                                                 bf16):  # fmt: skip
    """The two speed choices that follow the precision: NHWC student convolutions (oneDNN's fast bf16 path) and
    teacher matmul weights kept in bf16 instead of being re-cast by autocast on every forward."""
    config = build_train_config({**FAST, "out": str(tmp_path / "out"), "data": str(image_folder),
                                 "precision": precision, "max_steps": 2})  # fmt: skip
    trainer = Trainer(config)
    trainer.setup()
    try:
        conv = next(p for p in trainer.method.student.parameters() if p.ndim == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) is bf16
        qkv = trainer.method.teacher.backbone.blocks[0].attn.qkv.weight
        assert qkv.dtype == (torch.bfloat16 if bf16 else torch.float32)
        assert trainer.method.teacher.backbone.norm.weight.dtype == torch.float32
        trainer.train()  # and a run in that layout completes with a finite loss
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in _metrics(tmp_path / "out"))
    finally:
        trainer.cleanup()


def test_a_run_capped_by_max_steps_warms_up_and_decays_within_its_steps(tmp_path, image_folder):
    """epochs=100 but max_steps=20: the schedule spans the 20 steps the run takes (warmup = min(10 epochs, 10% of
    them), then cosine to min_lr_ratio x lr), read from the run's own metrics.jsonl and config.yaml."""
    out = tmp_path / "run"
    _train(out, image_folder, epochs=100, max_steps=20, log_every_n_steps=1, optim="adamw", optim_args={"lr": 1e-3},
           method_args={**FAST["method_args"], "lr_scale_method": "none"})  # fmt: skip
    config = yaml.safe_load((out / "config.yaml").read_text())
    resolved, ratio = config["resolved"], config["optim_args"]["min_lr_ratio"]
    assert (resolved["total_steps"], resolved["warmup_steps"], resolved["lr"]) == (20, 2, 1e-3)
    lrs = [record["lr"] for record in _metrics(out)]
    assert len(lrs) == 20
    assert lrs[:2] == pytest.approx([0.5e-3, 1e-3])  # step 1 and 2: warmup
    assert lrs[-1] == pytest.approx(1e-3 * ratio)  # the last step ends the cosine
    assert lrs[2] == pytest.approx(1e-3)  # the cosine starts at the peak
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # then decays every step


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:FutureWarning")
def test_provenance_of_the_teacher_and_data_goes_everywhere(tmp_path, mlflow_server):
    """The sha256 of the teacher file actually loaded, the teacher's name and the dataset fingerprint: in
    config.yaml, in the exported student (both files) and on the MLflow run."""
    from mlflow.tracking import MlflowClient
    from torch import nn

    from kubedistill import storage

    from ..evaluation.conftest import write_labeled_images

    teacher = tmp_path / "teacher.pt"
    torch.jit.script(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 16))).save(str(teacher))
    data = write_labeled_images(tmp_path / "images", 4, seed=0)
    manifest = kubedistill.validate(data=data, out=tmp_path / "data").manifest
    out = tmp_path / "run"
    _train(out, manifest, max_steps=1, method_args={"teacher": str(teacher)},
           mlflow={"tracking_uri": mlflow_server, "experiment_name": "provenance"})  # fmt: skip
    expected = {"teacher": str(teacher), "teacher_sha256": storage.sha256_file(teacher),
                "dataset_fingerprint": json.loads((tmp_path / "data" / "report.json").read_text())["fingerprint"]}
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    assert resolved["teacher_sha256"] == expected["teacher_sha256"]
    assert resolved["data_fingerprint"] == expected["dataset_fingerprint"]
    assert json.loads((out / "exported" / "student.json").read_text())["provenance"] == expected
    assert torch.load(out / "exported" / "student.pt", weights_only=True)["provenance"] == expected
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(mlflow_server).get_run(run_id).data.tags
    assert tags["kubedistill.teacher_sha256"] == expected["teacher_sha256"]
    assert tags["kubedistill.dataset_fingerprint"] == expected["dataset_fingerprint"]


def test_fp16_with_loss_scaling_trains_and_checkpoints_its_scaler(tmp_path, image_folder):
    """precision=16-mixed (GPUs without bf16) on the CPU: fp16 autocast, the GradScaler in the step and in the
    checkpoint."""
    out = tmp_path / "run"
    result = _train(out, image_folder, max_steps=3, precision="16-mixed", log_every_n_steps=1)
    assert result.steps == 3 and all(math.isfinite(r["loss"]) for r in _metrics(out))
    scaler = load_checkpoint(out / "checkpoints" / "last.pt")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["precision"] == "16-mixed"


class _NaNTeacher(torch.nn.Module):
    """Stands in for a teacher whose output overflowed: every vector is NaN."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.inner = teacher

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images) * float("nan")


def test_a_nan_loss_stops_the_run_at_the_next_log_step_naming_its_step_before_any_checkpoint(tmp_path, image_folder):
    """The loss is checked on the device every step and read at log steps only (no host sync per step on CUDA):
    NaN from step 1, log every 5 steps, a checkpoint due at step 2: the run stops at step 2, before that save,
    naming step 1."""
    from kubedistill.training.trainer import NonFiniteLossError

    out = tmp_path / "run"
    config = build_train_config({**FAST, "out": str(out), "data": str(image_folder), "max_steps": 6,
                                 "log_every_n_steps": 5, "checkpoint_every_n_steps": 2})  # fmt: skip
    trainer = Trainer(config)
    trainer.setup()
    trainer.method._teacher = (_NaNTeacher(trainer.method.teacher),)
    try:
        with pytest.raises(NonFiniteLossError, match=r"not finite at step 1; no checkpoint was written yet"):
            trainer.train()
        assert trainer.step == 2  # not read (a host sync) at step 1; read before the step-2 save
    finally:
        trainer.cleanup(failed=True)
    assert not list((out / "checkpoints").glob("step-*.pt"))  # the step-2 weights were NaN: never saved


def test_unreadable_images_are_counted_across_ranks_and_all_kept_in_the_checkpoint(tmp_path, monkeypatch):
    """devices=2, one epoch: each rank meets one of the two broken files (picked from each rank's share of the
    epoch). The limit applies to their sum, and the checkpoint keeps both ranks' (rank 0 alone writes it)."""
    from kubedistill.data.samplers import ShardedEpochSampler
    from kubedistill.data.sources import list_images

    from ..conftest import write_images

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    write_images(tmp_path / "images", 40)
    files = list_images(str(tmp_path / "images"))
    shares = [list(ShardedEpochSampler(40, rank=r, world_size=2, seed=0)) for r in (0, 1)]
    broken = [files[shares[0][0][1]], files[shares[1][0][1]]]  # the first image of each rank
    for path in broken:
        Path(path).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = {"devices": 2, "batch_size": 8, "epochs": 1, "seed": 0}
    result = _train(tmp_path / "run", tmp_path / "images", loader_args={"max_bad_fraction": 0.1}, **args)
    assert result.failed_images == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert sorted(state["failures"]["failed"]) == sorted(broken)
    # 2 of 40 is over 0.04 (1.6 images), though neither rank alone met more than one.
    with pytest.raises(DataError, match=r"2 of 40 images could not be decoded"):
        _train(tmp_path / "strict", tmp_path / "images", loader_args={"max_bad_fraction": 0.04}, **args)
