"""Loader throughput per CPU core: the torch DataLoader path against DALI's CPU path, at 224 with the default
augmentations, on generated 500x375 JPEGs.

Variants, measured in the same run and interleaved (one pass over the images each, round-robin, after one
warm-up pass that starts workers and builds pipelines; the median pass is reported):

- torch: ImageDataset + make_dataloader, num_workers 0 (decoding in this process) and 1 (a persistent worker);
- DALI, CPU operators: DaliLoader(device="cpu"), num_threads 1 and 2.

"per core" divides by the CPU seconds actually used (this process, all its threads, and its DataLoader
workers, read from /proc), so a variant is neither credited with cores it leaves idle nor charged for cores
that other programs on the machine use.
On a GPU, DaliLoader decodes JPEGs with nvJPEG instead: this benchmark measures the CPU fallback only.

    .venv/bin/python benchmarks/loader_speed.py [--images 384] [--rounds 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from common import cpu_name
from data_speed import make_jpegs

from kubedistill.data.dali import DaliLoader
from kubedistill.data.datasets import ImageDataset, make_dataloader
from kubedistill.data.transforms import DistillationTransform, DistillationTransformArgs


def cpu_seconds() -> float:
    """User + system CPU time of this process (every thread) and of its live child processes."""
    own = os.times()
    return own.user + own.system + sum(_process_cpu(child.pid) for child in multiprocessing.active_children())


def _process_cpu(pid: int | None) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def one_pass(
    loader: Iterable[dict], set_epoch: Callable[[int], None], epoch: int
) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one epoch of ``loader``."""
    set_epoch(epoch)
    cpu, start = cpu_seconds(), time.perf_counter()
    images = sum(batch["image"].shape[0] for batch in loader)
    return images, time.perf_counter() - start, cpu_seconds() - cpu


def build_loaders(files: list[str], batch: int) -> dict[str, object]:
    transform = DistillationTransform(DistillationTransformArgs())  # the defaults: 224, default augmentations
    loaders: dict[str, object] = {}
    for workers in (0, 1):
        loaders[f"torch DataLoader, num_workers={workers}"] = make_dataloader(
            dataset=ImageDataset(files, transform),
            batch_size=batch,
            num_workers=workers,
            shuffle=True,
            seed=0,
        )
    for threads in (1, 2):
        loaders[f"DALI CPU, num_threads={threads}"] = DaliLoader(
            files, transform, batch_size=batch, device="cpu", num_threads=threads, seed=0
        )
    return loaders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=384, help="images per pass (500x375 JPEGs)")
    parser.add_argument("--rounds", type=int, default=3, help="measured passes per variant, interleaved")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; DALI's threads are its own

    with tempfile.TemporaryDirectory() as tmp:
        files = [str(p) for p in make_jpegs(Path(tmp) / "jpegs", args.images)]
        loaders = build_loaders(files, args.batch)
        runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in loaders}
        names = list(loaders)
        for epoch in range(args.rounds + 1):  # epoch 0 warms up and is not counted
            order = names[epoch % len(names) :] + names[: epoch % len(names)]  # rotate who goes first
            for name in order:
                loader = loaders[name]
                result = one_pass(loader, loader.sampler.set_epoch, epoch)
                if epoch > 0:
                    runs[name].append(result)
        for loader in loaders.values():
            if isinstance(loader, DaliLoader):
                loader.close()

    import nvidia.dali

    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_name()}), torch {torch.__version__}, "
        f"DALI {nvidia.dali.__version__}, Python {platform.python_version()}"
    )
    print(f"date: {datetime.date.today().isoformat()}")
    print(
        f"data: {args.images} generated JPEGs 500x375, batch {args.batch}, output 224x224, default "
        f"augmentations; median of {args.rounds} interleaved passes\n"
    )
    print("| loader | images/s | CPU cores busy | images/s per core |")
    print("|---|---:|---:|---:|")
    for name, results in runs.items():
        rate = statistics.median(n / wall for n, wall, _ in results)
        busy = statistics.median(cpu / wall for _, wall, cpu in results)
        per_core = statistics.median(n / cpu for n, _, cpu in results)
        print(f"| {name} | {rate:.1f} | {busy:.2f} | {per_core:.1f} |")


if __name__ == "__main__":
    main()
