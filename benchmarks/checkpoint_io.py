"""Checkpoint write and read time: a local folder vs a gs:// run folder (fake-gcs-server on 127.0.0.1), in one run.

The checkpoint is what a resnet50 run saves: the student + head, the teacher-vector queue (8192 x 768 fp32),
LARS momentum buffers, the failure record, RNG state and the configuration. Write = `save_checkpoint` (temp
file, fsync, rename) [+ the upload of `RunFolder.push_checkpoint` for gs://]; read = `RunFolder.prepare(resume=True)`
(for gs://: list, download) + `load_checkpoint`. The emulator runs on the same 2 cores and keeps objects in
memory, so the gs:// figures measure the client's work (hashing, HTTP, chunking), not a network to GCS.

    .venv/bin/python benchmarks/checkpoint_io.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import cpu_name

from kubedistill.devtools.gcs_emulator import GcsEmulator
from kubedistill.methods.distillation import Distillation
from kubedistill.models.students import build_student
from kubedistill.training.checkpoint import load_checkpoint, save_checkpoint
from kubedistill.training.runfolder import RunFolder


def checkpoint_state() -> dict:
    student = build_student("torchvision/resnet50", image_size=(224, 224))
    teacher = torch.nn.Linear(3, 768)  # only its size matters here: the teacher is not in the checkpoint
    method = Distillation(student=student, student_dim=student.feature_dim, teacher=teacher, teacher_dim=768,
                          queue_size=8192)  # fmt: skip
    model = {k: v for k, v in method.state_dict().items() if not k.startswith("teacher.")}
    momentum = {i: {"momentum_buffer": torch.randn_like(p)} for i, p in enumerate(method.student.parameters())}
    return {"step": 1000, "epoch": 3, "batch_in_epoch": 10, "total_steps": 10000, "queue_size": 8192,
            "model": model, "optimizer": {"state": momentum, "param_groups": []}, "failures": {"failed": []},
            "rng": {"torch": torch.get_rng_state(), "cuda": None}, "config": {"seed": 0}}  # fmt: skip


def measure(out: str, state: dict, staging: Path) -> tuple[float, float, int]:
    """(write s, read s, bytes) of one checkpoint in the run folder ``out``."""
    folder = RunFolder(out, cache_dir=staging / "writer")
    folder.prepare(overwrite=True, resume=False)
    started = time.perf_counter()
    path = save_checkpoint(state, folder.layout.checkpoints, step=1000, keep=3)
    folder.push_checkpoint(path, keep=3)
    written = time.perf_counter() - started
    size = path.stat().st_size
    reader = RunFolder(out, cache_dir=staging / "reader")  # another node: nothing local
    started = time.perf_counter()
    loaded = load_checkpoint(reader.prepare(overwrite=False, resume=True))
    read = time.perf_counter() - started
    assert loaded["step"] == 1000
    return written, read, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    state = checkpoint_state()
    results: dict[str, list[tuple[float, float, int]]] = {"local disk": [], "gs:// (emulator)": []}
    with GcsEmulator() as url, tempfile.TemporaryDirectory() as tmp:
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from google.cloud import storage as gcs

        gcs.Client(project="bench").create_bucket("bench-checkpoints")
        for repeat in range(args.repeats):  # interleaved: drift hits both alike
            results["local disk"].append(measure(f"{tmp}/local-{repeat}", state, Path(tmp) / f"s{repeat}l"))
            results["gs:// (emulator)"].append(
                measure(f"gs://bench-checkpoints/run-{repeat}", state, Path(tmp) / f"s{repeat}g")
            )
    print(f"machine: {cpu_name()}; torch {torch.__version__}; date: {dt.date.today()}")
    print(f"command: .venv/bin/python benchmarks/checkpoint_io.py --repeats {args.repeats}\n")
    print("| run folder | checkpoint (MB) | write (s), median | read (s), median | runs (write / read) |")
    print("|---|---:|---:|---:|---|")
    for name, runs in results.items():
        writes, reads = [r[0] for r in runs], [r[1] for r in runs]
        runs_text = ", ".join(f"{w:.2f}/{r:.2f}" for w, r in zip(writes, reads, strict=True))
        print(f"| {name} | {runs[0][2] / 1e6:.0f} | {statistics.median(writes):.2f} | {statistics.median(reads):.2f} "
              f"| {runs_text} |")  # fmt: skip


if __name__ == "__main__":
    main()
