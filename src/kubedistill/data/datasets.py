"""Training dataset and loader that survive unreadable images.

A file that fails to decode is replaced by another image of the dataset (chosen deterministically), so every
batch keeps its size: distributed ranks stay in step and the method's fixed-size queue is filled as planned.
Each replacement is reported in the sample's ``failures``; the training loop feeds them to a
``FailureCounter``, which stops the run once too many distinct files are bad.

This module is given rank and world size as arguments and never talks to torch.distributed itself.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypedDict

import torch
from torch.utils.data import DataLoader, Dataset

from kubedistill.data.images import ImageDecodeError
from kubedistill.data.remote import ImageReader
from kubedistill.data.samplers import SampleKey, ShardedEpochSampler, sample_seed
from kubedistill.errors import ConfigError, DataError

__all__ = [
    "FailureCounter",
    "ImageDataset",
    "Sample",
    "collate",
    "make_dataloader",
    "resolve_num_workers",
]

logger = logging.getLogger(__name__)

# A (path, one-line reason) pair for an image that could not be used.
Failure = tuple[str, str]


class Sample(TypedDict):
    """One item of ``ImageDataset``."""

    image: torch.Tensor  # whatever the transform returns, e.g. float32 (3, h, w)
    index: int  # index (into ``files``) of the image actually returned: a substitute's after a failure
    failures: list[Failure]  # files that were tried for this item and could not be decoded


class ImageDataset(Dataset[Sample]):
    """Images from a list of files, each passed through ``transform``.

    Args:
        files: image paths (local), e.g. from ``list_image_files`` or a validated manifest.
        transform: called on the decoded uint8 (3, H, W) tensor, e.g. a ``DistillationTransform``.
        max_retries: substitutes to try after a failure before giving up with ``DataError``.
        loader: URI -> uint8 (3, H, W) tensor; by default an ``ImageReader`` (local paths, and gs:// URIs read
            from the bucket; give it a cache folder to read staged copies).
        seed: base of the per-sample augmentation seeds used with (epoch, index) keys.
    """

    def __init__(
        self,
        files: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_retries: int = 16,
        loader: Callable[[str], torch.Tensor] | None = None,
        seed: int = 0,
    ):
        if len(files) == 0:
            raise DataError("The dataset has no files: check the data source or the manifest.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.files = list(files)
        self.transform = transform
        self.max_retries = max_retries
        self.loader = loader if loader is not None else ImageReader()
        self.seed = seed
        self._step = _coprime_step(len(self.files))
        self._warned: set[str] = set()  # per process: each DataLoader worker warns once per bad file

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """``key``: an index, or (epoch, index) from ShardedEpochSampler; then the augmentation is seeded from
        (seed, epoch, index) and does not depend on worker assignment or on earlier samples."""
        if isinstance(key, int):
            return self._load(key)
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, which fork_rng restores: torch.manual_seed would also reseed (and, in a
            # process where CUDA is up, leave reseeded) every GPU's generator, and where it is not up it
            # formats three stack traces per call, ~0.3 ms per image.
            torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self._load(index)

    def _load(self, index: int) -> Sample:
        failures: list[Failure] = []
        for attempt in range(self.max_retries + 1):
            # Golden-ratio stepping lands substitutes far apart, away from a cluster of bad files
            # (e.g. one broken folder), and is the same in every worker and every run.
            candidate = (index + attempt * self._step) % len(self.files)
            path = self.files[candidate]
            try:
                image = self.loader(path)
            except (ImageDecodeError, OSError) as e:
                failures.append((path, _reason(e)))
                self._warn_once(path, _reason(e))
                continue
            return {"image": self.transform(image), "index": candidate, "failures": failures}
        shown = "; ".join(f"{p}: {r}" for p, r in failures[:3])
        raise DataError(
            f"Image {index} and {self.max_retries} substitutes could not be decoded ({shown} ...). Most of the "
            "data seems unreadable: run `kubedistill validate` on it to list the bad files."
        )

    def _warn_once(self, path: str, reason: str) -> None:
        if path not in self._warned:
            self._warned.add(path)
            logger.warning(
                "Skipping unreadable image %s (%s); a substitute image is used instead.", path, reason
            )


def _reason(error: Exception) -> str:
    return error.reason if isinstance(error, ImageDecodeError) else str(error) or type(error).__name__


def _coprime_step(n: int) -> int:
    """A step near n / golden ratio that is coprime to n, so (i + k * step) % n visits every index."""
    step = max(1, round(n * 0.6180339887))
    while math.gcd(step, n) != 1:
        step += 1
    return step


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batch samples: ``image`` (B, ...) stacked, ``index`` (B,) int64, ``failures`` one flat list."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "failures": [f for s in samples for f in s["failures"]],
    }


class FailureCounter:
    """Counts distinct unreadable files and stops the run when there are too many.

    Args:
        total_images: size of the dataset.
        max_bad_fraction: the largest tolerated fraction of unreadable files. The run stops as soon as
            ``num_failed > max_bad_fraction * total_images``; 0 tolerates none.
    """

    def __init__(self, total_images: int, max_bad_fraction: float = 0.05):
        if total_images <= 0 or not 0 <= max_bad_fraction <= 1:
            raise ValueError(
                f"FailureCounter needs total_images > 0 and max_bad_fraction in [0, 1], got {total_images} "
                f"and {max_bad_fraction}"
            )
        self.total_images = total_images
        self.max_bad_fraction = max_bad_fraction
        self._failed: dict[str, str] = {}  # path -> reason, in the order first seen

    @property
    def num_failed(self) -> int:
        return len(self._failed)

    @property
    def failed_paths(self) -> list[str]:
        return list(self._failed)

    def update(self, failures: Iterable[Failure]) -> None:
        """Record (path, reason) pairs, e.g. a batch's ``failures``; raises DataError past the limit."""
        for path, reason in failures:
            self._failed.setdefault(path, reason)
        if self.num_failed > self.max_bad_fraction * self.total_images:
            raise DataError(self._too_many_message())

    def _too_many_message(self) -> str:
        first = ", ".join(self.failed_paths[:5]) + (" ..." if self.num_failed > 5 else "")
        return (
            f"{self.num_failed} of {self.total_images} images could not be decoded (first: {first}); that is "
            f"more than max_bad_fraction={self.max_bad_fraction}. Run `kubedistill validate` to find them, "
            "or raise loader_args.max_bad_fraction."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"failed": dict(self._failed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._failed = dict(state["failed"])


def make_dataloader(
    *,
    dataset: Dataset[Sample],
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    persistent_workers: bool = True,
    prefetch_factor: int | None = 2,
) -> DataLoader[Sample]:
    """A loader over this rank's shard of ``dataset``, batched with ``collate``.

    The sampler is a ``ShardedEpochSampler`` (also for world_size 1, so a single process runs the same code):
    every rank gets a disjoint, equally long shard of the epoch's seeded permutation. The caller must call
    ``loader.sampler.set_epoch(epoch, start)`` before each epoch (``start`` skips items a resumed run already
    used). Items are (epoch, index) keys, so each sample's augmentation is seeded from (seed, epoch, index)
    and does not depend on the number of workers or on which worker loads it.
    """
    if batch_size <= 0 or num_workers < 0 or world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(
            f"make_dataloader: need batch_size > 0, num_workers >= 0 and 0 <= rank < world_size; got "
            f"batch_size={batch_size}, num_workers={num_workers}, rank={rank}, world_size={world_size}"
        )
    sampler = ShardedEpochSampler(len(dataset), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle)
    workers = num_workers > 0  # DataLoader rejects the two worker options without workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=persistent_workers and workers,
        prefetch_factor=prefetch_factor if workers else None,
    )


def resolve_num_workers(
    num_workers: int | Literal["auto"], *, world_size_local: int = 1, compute_on_cpu: bool = False
) -> int:
    """Loader worker processes per training process.

    "auto" shares the CPUs this process may use (affinity and, in a container, the cgroup CPU quota) among the
    ``world_size_local`` training processes of this machine. With an accelerator, one CPU per process stays
    with the process itself and the rest decode (capped at 8: more rarely helps and costs memory). When the
    model itself computes on the CPU, decoding is a small share of a step and every worker takes a core from
    the model's threads (which then wait on each other): one worker per 8 CPUs, so 0 (decoding in the
    training process) below 8 CPUs. BENCHMARKS.md has the measurement.
    """
    if num_workers == "auto":
        per_process = _available_cpus() // max(1, world_size_local)
        if compute_on_cpu:
            return min(8, per_process // 8)
        return max(0, min(8, per_process - 1))
    if isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0:
        return num_workers
    raise ConfigError([f"loader_args.num_workers: {num_workers!r} must be a non-negative integer or 'auto'"])


def _available_cpus() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs allowed by a cgroup v2 quota (a Kubernetes CPU limit), rounded down; None when unlimited."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup v2 here, or a format we do not know: no limit known
        return None
