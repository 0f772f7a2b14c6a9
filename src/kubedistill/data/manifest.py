"""The dataset manifest: one JSON object per line for each image that passed validation.

``manifest.jsonl`` lines look like::

    {"uri": "gs://bucket/cats/001.jpg", "bytes": 48213, "width": 640, "height": 480, "format": "JPEG",
     "sha256": "9f2c...", "label": "cats"}

``uri`` is an absolute local path or a full gs:// URI; width and height are after EXIF orientation;
``format`` is what the content is (not what the extension says); ``label`` is the class folder when the data
has a class-per-folder layout, else null. Lines are sorted by ``uri`` and written with a fixed key order, so
the same data always gives the same bytes and the same fingerprint (the sha256 of those bytes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

from kubedistill import storage
from kubedistill.errors import DataError, StorageError

__all__ = [
    "MANIFEST_NAME",
    "ManifestEntry",
    "class_folder_labels",
    "encode_manifest",
    "fingerprint",
    "is_manifest",
    "load_labeled",
    "parse_manifest",
    "read_manifest",
    "read_manifest_bytes",
]

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class ManifestEntry:
    uri: str
    bytes: int
    width: int
    height: int
    format: str
    sha256: str
    label: str | None = None


_FIELDS = {f.name: f.type for f in fields(ManifestEntry)}
_TYPES = {"uri": str, "bytes": int, "width": int, "height": int, "format": str, "sha256": str}


def is_manifest(uri: str) -> bool:
    """Whether a data source names a manifest file (by its ``.jsonl`` suffix)."""
    return str(uri).lower().endswith(MANIFEST_SUFFIX)


def encode_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    """The manifest file's bytes: entries sorted by URI, one compact JSON object per line."""
    lines = [json.dumps(asdict(e), ensure_ascii=False) for e in sorted(entries, key=lambda e: e.uri)]
    return "".join(line + "\n" for line in lines).encode()


def fingerprint(manifest_bytes: bytes) -> str:
    """The dataset fingerprint: ``sha256:<hex>`` of the manifest's bytes (same images -> same fingerprint)."""
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


def read_manifest(uri: str) -> list[ManifestEntry]:
    """Parse a manifest (local path or gs:// URI). Every line is checked; errors name the line and the fix.

    Raises:
        DataError: the file cannot be read, a line is not a manifest entry, or the manifest is empty.
    """
    return parse_manifest(read_manifest_bytes(uri), uri)


def read_manifest_bytes(uri: str) -> bytes:
    """The manifest file's content (its fingerprint is ``fingerprint`` of these bytes)."""
    try:
        return storage.read_bytes(uri)
    except StorageError as e:
        raise DataError(f"Cannot read the manifest {uri}: {e}") from e


def parse_manifest(raw: bytes, uri: str) -> list[ManifestEntry]:
    """Entries of a manifest's content; ``uri`` names it in errors."""
    entries: list[ManifestEntry] = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        entries.append(_parse_line(line, uri, number))
    if not entries:
        raise DataError(f"The manifest {uri} lists no images: run `kubedistill validate` on the data again.")
    return entries


def _parse_line(line: str, uri: str, number: int) -> ManifestEntry:
    where = f"{uri} line {number}"
    hint = "the file must be a manifest.jsonl written by `kubedistill validate`"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not JSON ({e.msg}): {hint}.") from e
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object: {hint}.")
    missing = [name for name in _TYPES if name not in record]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}: {hint}.")
    for name, kind in _TYPES.items():
        value = record[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{where}: {name}={value!r} should be of type {kind.__name__}: {hint}.")
    label = record.get("label")
    if label is not None and not isinstance(label, str):
        raise DataError(f"{where}: label={label!r} should be a string or null: {hint}.")
    return ManifestEntry(**{k: record.get(k) for k in _FIELDS})


def class_folder_labels(relative_paths: Sequence[str]) -> list[str] | None:
    """Labels of a class-per-folder layout (``root/<class>/.../image``): the first folder below the root.

    None when the paths are not such a layout: some image lies directly in the root, or all images share one
    folder (a single "images/" folder is a container, not a class).
    """
    parts = [p.split("/", 1) for p in relative_paths]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    labels = [p[0] for p in parts]
    return labels if len(set(labels)) >= 2 else None


def load_labeled(uri: str) -> tuple[list[str], list[str]]:
    """Image URIs and their class labels, from a manifest (its ``label`` field) or a class-per-folder root
    (local path or gs:// prefix), sorted by URI.

    Raises:
        DataError: no labels (a manifest whose entries have label null, or a folder that is not
            class-per-folder), fewer than two classes, or the source cannot be read.
    """
    if is_manifest(uri):
        entries = read_manifest(uri)
        unlabeled = [e.uri for e in entries if e.label is None]
        if unlabeled:
            raise DataError(
                f"{len(unlabeled)} of {len(entries)} images in the manifest {uri} have no label "
                f"(e.g. {unlabeled[0]}): validate a class-per-folder layout (root/<class>/<image>) with "
                "labels=auto or labels=folder."
            )
        uris, labels = [e.uri for e in entries], [str(e.label) for e in entries]
    else:
        from kubedistill.data.sources import list_images

        uris = list_images(uri)
        labels_or_none = class_folder_labels([storage.relative_to(u, uri) for u in uris])
        if labels_or_none is None:
            raise DataError(
                f"{uri} is not a class-per-folder layout (root/<class>/<image>, at least two class folders, no "
                "images directly in the root): arrange it so, or validate it and label the manifest."
            )
        labels = labels_or_none
    if len(set(labels)) < 2:
        raise DataError(f"{uri} has a single class ({labels[0]!r}): a classifier needs at least two.")
    order = sorted(range(len(uris)), key=uris.__getitem__)
    return [uris[i] for i in order], [labels[i] for i in order]
