"""Turning a ``data=`` argument into the list of images to read.

A source is a local folder, a local image file, a ``gs://bucket/prefix`` (listed recursively), or a manifest
written by `kubedistill validate` (``.../manifest.jsonl``, local or gs://). ``data`` may be one source or a
list of them. Folders and prefixes are listed once, when the run starts: never again per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubedistill import storage
from kubedistill.data.files import list_image_files
from kubedistill.data.images import IMAGE_EXTENSIONS, has_image_extension
from kubedistill.data.manifest import (
    ManifestEntry,
    fingerprint,
    is_manifest,
    parse_manifest,
    read_manifest_bytes,
)
from kubedistill.errors import DataError, StorageError

__all__ = ["ImageList", "list_images", "resolve_images", "skip_reason"]


@dataclass
class ImageList:
    """Image URIs to read (sorted, no duplicates), with their sizes and checksums when a manifest gave them."""

    uris: list[str]
    sizes: list[int] | None = None  # per URI, from a manifest
    sha256: list[str] | None = None  # per URI, from a manifest
    manifests: list[str] | None = None  # manifest URIs the images came from
    remote_bytes: int | None = None  # total size of the gs:// images, when the listing or manifest gave it
    fingerprint: str | None = None  # of the manifest (several: of their fingerprints); None for folders

    def __len__(self) -> int:
        return len(self.uris)

    @property
    def remote(self) -> bool:
        return any(storage.is_gcs(u) for u in self.uris)


def skip_reason(relative_path: str) -> str | None:
    """Why a listed file is not an image candidate ("hidden" or "not_an_image_extension"), or None."""
    if any(part.startswith(".") for part in relative_path.split("/")):
        return "hidden"
    if not has_image_extension(relative_path):
        return "not_an_image_extension"
    return None


def list_images(source: str) -> list[str]:
    """Image files under one local or gs:// source (not a manifest), sorted; hidden and non-image skipped.

    Raises:
        DataError: the source does not exist, cannot be listed, or holds no image.
    """
    if not storage.is_gcs(source):
        return list_image_files(source)
    return [f.uri for f in _list_gcs_images(source)]


def _list_gcs_images(source: str) -> list[storage.FileInfo]:
    try:
        listed = storage.list_files(source)
    except StorageError as e:
        raise DataError(str(e)) from e
    found = [f for f in listed if skip_reason(storage.relative_to(f.uri, source)) is None]
    if not found:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(
            f"No images found under {source} ({len(listed)} object(s) listed). Accepted extensions (any "
            f"case): {accepted}; names starting with '.' are skipped. Check the bucket and prefix."
        )
    return found


def resolve_images(data: str | Sequence[str]) -> ImageList:
    """All images of ``data`` (one source or a list of sources; see the module docstring).

    Raises:
        DataError: a source is missing, unreadable or empty; a manifest is malformed.
    """
    sources = [data] if isinstance(data, str) else [str(d) for d in data]
    if not sources:
        raise DataError("No data source was given: pass a folder, a gs:// prefix or a manifest.jsonl.")
    manifests = [s for s in sources if is_manifest(s)]
    if not manifests:
        local = [s for s in sources if not storage.is_gcs(s)]
        uris = set(list_image_files(local)) if local else set()
        remote: dict[str, int] = {}
        for source in sources:
            if storage.is_gcs(source):
                remote.update((f.uri, f.size) for f in _list_gcs_images(source))
        uris.update(remote)
        return ImageList(sorted(uris), remote_bytes=sum(remote.values()) if remote else None)
    if len(manifests) != len(sources):
        raise DataError(
            f"data mixes manifests ({manifests[0]}) with folders: pass either manifests or folders/prefixes."
        )
    by_uri: dict[str, ManifestEntry] = {}
    prints = []
    for manifest in manifests:
        raw = read_manifest_bytes(manifest)
        prints.append(fingerprint(raw))
        for entry in parse_manifest(raw, manifest):
            by_uri.setdefault(entry.uri, entry)
    entries = [by_uri[u] for u in sorted(by_uri)]
    return ImageList(
        uris=[e.uri for e in entries],
        sizes=[e.bytes for e in entries],
        sha256=[e.sha256 for e in entries],
        manifests=manifests,
        remote_bytes=sum(e.bytes for e in entries if storage.is_gcs(e.uri)) or None,
        fingerprint=prints[0] if len(prints) == 1 else fingerprint("\n".join(prints).encode()),
    )
