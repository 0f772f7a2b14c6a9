"""Reading training images from gs://: staged to local disk in parallel first, or streamed by the loader.

``ImageReader`` is the dataset's loader for every URI: local paths are read in place; a gs:// URI is read from
its copy in the node's cache folder when there is one, otherwise fetched from the bucket (streamed). Either
way a failure becomes an ``ImageDecodeError`` naming the gs:// URI, so the dataset substitutes the image and
the run counts it like any unreadable file.

``stage`` fills the cache before training with many parallel reads (files already cached with the right size
are kept), and checks each file against the manifest's sha256 when it has one. One process per node stages
(an flock on the cache folder): the node's other processes wait, then find every file cached. BENCHMARKS.md
has the measurement behind ``choose_remote_mode``: staging first, when the data fits on the local disk.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from kubedistill import storage
from kubedistill.data.images import MAX_IMAGE_PIXELS, ImageDecodeError, decode_image, read_file_bytes
from kubedistill.errors import StorageError

__all__ = ["ImageReader", "StageStats", "cache_path", "choose_remote_mode", "data_cache_dir", "stage"]

logger = logging.getLogger(__name__)

CACHE_ENV = "KUBEDISTILL_CACHE_DIR"
STAGE_WORKERS = 32
# Staging leaves at least this much of the cache disk free (and 10% of the data on top).
FREE_DISK_RESERVE = 2 << 30


def data_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The node-local folder for staged images: ``cache_dir``, $KUBEDISTILL_CACHE_DIR/data or
    ~/.cache/kubedistill/data."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/kubedistill").expanduser() / "data"


def cache_path(cache_dir: Path, uri: str) -> Path:
    """Where ``uri`` is staged: a hash of the whole URI (two buckets never collide) plus its extension."""
    digest = hashlib.sha256(uri.encode()).hexdigest()
    suffix = PurePosixPath(uri).suffix.lower()[:8]
    return cache_dir / digest[:2] / f"{digest}{suffix}"


class ImageReader:
    """URI -> uint8 (3, H, W) RGB tensor, for ``ImageDataset(loader=...)``. Picklable (DataLoader workers)."""

    def __init__(
        self, cache_dir: str | os.PathLike[str] | None = None, *, max_pixels: int = MAX_IMAGE_PIXELS
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_pixels = max_pixels

    def __call__(self, uri: str) -> torch.Tensor:
        return decode_image(self.read_bytes(uri), source=uri, max_pixels=self.max_pixels)

    def read_bytes(self, uri: str) -> bytes:
        """The encoded file: a local path in place; a gs:// URI from its staged copy in ``cache_dir`` when there
        is one, else from the bucket. ImageDecodeError ("unreadable") when it cannot be read."""
        if not storage.is_gcs(uri):
            return read_file_bytes(uri)
        if self.cache_dir is not None:
            try:
                return cache_path(self.cache_dir, uri).read_bytes()
            except FileNotFoundError:
                pass  # not staged (its download failed, or streaming): read it from the bucket
        try:
            return storage.read_bytes(uri)
        except StorageError as e:
            raise ImageDecodeError(uri, str(e), "unreadable") from e


@dataclass
class StageStats:
    files: int  # files in the list
    downloaded: int  # fetched now
    cached: int  # already in the cache
    failed: (
        int  # could not be fetched (or did not match the manifest's sha256); streamed or substituted later
    )
    bytes: int  # downloaded now
    seconds: float


def choose_remote_mode(mode: str, total_bytes: int | None, cache_dir: Path) -> str:
    """ "stage" or "stream" for ``loader_args.remote``: "auto" stages when the data fits on the cache disk."""
    if mode != "auto":
        return mode
    if total_bytes is None:
        return "stage"
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if total_bytes * 1.1 + FREE_DISK_RESERVE <= free:
        return "stage"
    logger.warning(
        "the data (%.1f GB) does not fit in %s (%.1f GB free): streaming every image from the bucket instead of "
        "staging it; set KUBEDISTILL_CACHE_DIR to a larger local disk to stage",
        total_bytes / 1e9,
        cache_dir,
        free / 1e9,
    )
    return "stream"


def stage(
    uris: Sequence[str],
    cache_dir: Path,
    *,
    sizes: Sequence[int] | None = None,
    sha256: Sequence[str] | None = None,
    workers: int = STAGE_WORKERS,
) -> StageStats:
    """Copy every gs:// URI of ``uris`` into ``cache_dir`` (local paths are left alone), ``workers`` at a time.

    A cached file whose size matches ``sizes`` (when given) is kept. With ``sha256``, a downloaded file that
    does not match is not kept (logged, counted as failed). Failures never stop staging: the loader reads such
    images from the bucket or substitutes them.
    """
    started = time.monotonic()
    jobs = [(i, uri) for i, uri in enumerate(uris) if storage.is_gcs(uri)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _node_lock(cache_dir):  # one stager per node; the others wait here and then find the files cached
        counts = {"downloaded": 0, "cached": 0, "failed": 0, "bytes": 0}
        last_log = time.monotonic()

        def fetch_one(job: tuple[int, str]) -> tuple[str, int]:
            index, uri = job
            target = cache_path(cache_dir, uri)
            expected_size = sizes[index] if sizes is not None else None
            try:
                if target.exists() and (expected_size is None or target.stat().st_size == expected_size):
                    return "cached", 0
                data = storage.read_bytes(uri)
            except (StorageError, OSError) as e:
                logger.warning("staging %s failed (%s); it will be read from the bucket when needed", uri, e)
                return "failed", 0
            if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256[index]:
                logger.warning(
                    "%s does not match the manifest's sha256 (changed since validation?): not staged", uri
                )
                return "failed", 0
            try:
                storage.write_bytes(str(target), data)
            except StorageError as e:
                logger.warning("cannot stage %s: %s", uri, e)
                return "failed", 0
            return "downloaded", len(data)

        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="stage") as pool:
            for done, (outcome, nbytes) in enumerate(pool.map(fetch_one, jobs), start=1):
                counts[outcome] += 1
                counts["bytes"] += nbytes
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    rate = done / (last_log - started)
                    logger.info("staged %d/%d images (%.0f/s) to %s", done, len(jobs), rate, cache_dir)
    stats = StageStats(files=len(jobs), seconds=time.monotonic() - started, **counts)
    logger.info(
        "staged %d images from the bucket in %.1f s (%d downloaded, %.1f MB; %d already cached; %d failed)",
        stats.files,
        stats.seconds,
        stats.downloaded,
        stats.bytes / 1e6,
        stats.cached,
        stats.failed,
    )
    return stats


@contextmanager
def _node_lock(cache_dir: Path) -> Iterator[None]:
    with open(cache_dir / ".stage.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
