"""Training with loader_args.backend=dali (DALI's CPU backend here; nvJPEG on CUDA): the same run as the torch
loader within a stated tolerance, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import kubedistill
from kubedistill.training.trainer import Trainer

from ..conftest import TINY_RUN

FAST = {**TINY_RUN, "precision": "32-true"}


def _train(out: Path, data: Path, backend: str, **overrides):
    return kubedistill.train(out=out, data=data, loader_args={"backend": backend}, **{**FAST, **overrides})


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_dali_loader_trains_like_the_torch_loader(tmp_path, image_folder):
    """Same seed, same images, same random choices: the loss curves agree within the pixel differences of the
    two decoders (DALI's resize reads the pixels just outside the crop; it clips once after colour jitter)."""
    _train(tmp_path / "torch", image_folder, "torch", max_steps=8, log_every_n_steps=1)
    _train(tmp_path / "dali", image_folder, "dali", max_steps=8, log_every_n_steps=1)
    resolved = yaml.safe_load((tmp_path / "dali" / "config.yaml").read_text())["resolved"]
    assert resolved["loader_backend"] == "dali"
    torch_losses, dali_losses = _losses(tmp_path / "torch"), _losses(tmp_path / "dali")
    assert len(dali_losses) == 8
    assert dali_losses == pytest.approx(torch_losses, rel=0.05)  # stated tolerance: 5% per step
    assert dali_losses != torch_losses  # two decoders, not one path twice


class _NodeLostError(Exception):
    """Stands in for a node lost right after a checkpoint."""


def test_a_dali_run_resumes_exactly(tmp_path, image_folder, monkeypatch):
    """16 steps straight vs stopped after the step-8 checkpoint and resumed: the resumed half gets the same
    DALI batches (the sampler skips the trained items), so the weights and losses are the same."""
    settings = {"epochs": 2, "checkpoint_every_n_steps": 4, "log_every_n_steps": 1}
    _train(tmp_path / "straight", image_folder, "dali", **settings)

    save = Trainer.save_checkpoint

    def save_then_stop(self):
        save(self)
        if self.step == 8:
            raise _NodeLostError

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(_NodeLostError):
        _train(tmp_path / "resumed", image_folder, "dali", **settings)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    _train(tmp_path / "resumed", image_folder, "dali", resume_interrupted=True, **settings)

    a = kubedistill.load_student(tmp_path / "straight" / "exported" / "student.pt").state_dict()
    b = kubedistill.load_student(tmp_path / "resumed" / "exported" / "student.pt").state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=1e-6) for k in a)
    assert _losses(tmp_path / "resumed")[-8:] == pytest.approx(_losses(tmp_path / "straight")[-8:], rel=1e-6)


def test_a_resume_with_the_other_loader_is_refused(tmp_path, image_folder):
    """The two decoders differ slightly in pixels: switching mid-run would break the run's exactness."""
    from kubedistill.errors import KubedistillError

    _train(tmp_path / "run", image_folder, "torch", max_steps=4, checkpoint_every_n_steps=2)
    (tmp_path / "run" / "exported" / "student.pt").unlink()  # as if stopped before the end
    with pytest.raises(KubedistillError, match="loader_backend: 'torch' -> 'dali'"):
        _train(tmp_path / "run", image_folder, "dali", max_steps=4, checkpoint_every_n_steps=2,
               resume_interrupted=True)  # fmt: skip
