"""Resolve a weights source (local path, https:// URL or gs:// URI) to a verified local file.

Remote files are cached once per node: under ``cache_dir``, else ``$KUBEDISTILL_CACHE_DIR``, else
``~/.cache/kubedistill``, in a ``weights/`` subfolder. Every local process of a multi-GPU job resolves the
same teacher at start-up; an exclusive lock on a sibling ``.lock`` file makes the first one download it and
the others wait for it and then reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from kubedistill.errors import StorageError, WeightsError
from kubedistill.storage import fetch, is_remote, normalize_sha256, sha256_file, to_local_path, verify_sha256

logger = logging.getLogger(__name__)

CACHE_ENV = "KUBEDISTILL_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/kubedistill")


def resolve_weights(source: str, *, sha256: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local file holding the weights of ``source``, verified against ``sha256`` when given.

    Local paths (and file:// URIs) are used in place. Remote ones are downloaded into the cache once; a
    cached file that no longer matches ``sha256`` is downloaded again.
    """
    try:
        return _resolve(source, sha256, cache_dir)
    except StorageError as e:  # a storage failure while fetching weights is a weights problem to the user
        raise WeightsError(str(e)) from e


def _resolve(source: str, sha256: str | None, cache_dir: str | Path | None) -> Path:
    if not is_remote(source):
        return _local_weights(source, sha256)
    target = cached_path(source, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        if target.is_file() and _cached_copy_is_good(target, source, sha256):
            logger.info("using cached %s for %s", target, source)
            return target
        logger.info("downloading %s to %s", source, target)
        return fetch(source, target, sha256=sha256)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The weights cache folder: ``cache_dir`` or $KUBEDISTILL_CACHE_DIR or ~/.cache/kubedistill, + weights/."""
    root = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(root).expanduser() / "weights"


def cached_path(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``uri`` is cached: its basename plus a short hash of the whole URI, so that two URIs with the
    same basename (two buckets, two versions) never share a file."""
    basename = PurePosixPath(urlparse(uri).path).name or "weights"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", basename)
    stem, dot, suffix = safe.rpartition(".")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    name = f"{stem}-{digest}.{suffix}" if dot and stem else f"{safe}-{digest}"
    return cache_root(cache_dir) / name


def _local_weights(source: str, sha256: str | None) -> Path:
    path = to_local_path(source)
    if not path.is_file():
        raise WeightsError(
            f"Weights file {path} does not exist: pass an existing file, an https:// URL or a gs:// URI."
        )
    if sha256 is not None:
        verify_sha256(path, sha256)
    return path


def _cached_copy_is_good(path: Path, source: str, sha256: str | None) -> bool:
    if sha256 is None:
        return True
    if sha256_file(path) == normalize_sha256(sha256):
        return True
    logger.warning("cached %s does not match sha256 %s: downloading %s again", path, sha256, source)
    return False


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an flock on ``lock_path`` (per node: flock does not reach across NFS clients reliably)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
