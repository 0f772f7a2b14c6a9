"""Finding the image files of a local dataset."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from kubedistill.data.images import IMAGE_EXTENSIONS, has_image_extension
from kubedistill.errors import DataError

__all__ = ["list_image_files"]

_ACCEPTED = ", ".join(sorted(IMAGE_EXTENSIONS))


def list_image_files(sources: str | Path | Sequence[str | Path]) -> list[str]:
    """All image files under ``sources``: absolute paths, sorted, without duplicates.

    Args:
        sources: a folder (searched recursively), an image file, or a list of folders and files.

    Folders are walked with ``os.scandir`` (one system call per folder, not one ``stat`` per file), so 100k
    files take well under a second on a local disk. Inside a folder, names starting with "." (hidden files and
    folders such as ``.git`` or ``.ipynb_checkpoints``) are skipped, as are files whose extension is not one of
    ``IMAGE_EXTENSIONS`` (compared case-insensitively). Symlinked folders are followed once (loops are cut).
    Paths are made absolute but symlinks are not resolved, so they read as the user wrote them.

    Raises:
        DataError: a source does not exist, is a file without an image extension, cannot be listed, or no
            image is found at all.
    """
    roots = [sources] if isinstance(sources, str | Path) else list(sources)
    if not roots:
        raise DataError("No data source was given: pass a folder or a list of image files and folders.")
    found: set[str] = set()
    for root in roots:
        found.update(_list_source(os.path.abspath(os.fspath(root))))
    if not found:
        shown = ", ".join(os.fspath(r) for r in roots[:5]) + (" ..." if len(roots) > 5 else "")
        raise DataError(
            f"No images found in {shown}. Accepted extensions (any case): {_ACCEPTED}; files and folders "
            "whose names start with '.' are skipped."
        )
    return sorted(found)


def _list_source(path: str) -> Iterator[str]:
    if os.path.isdir(path):
        yield from _walk(path)
    elif os.path.isfile(path):
        if not has_image_extension(path):
            raise DataError(f"{path} is not an image file: accepted extensions (any case) are {_ACCEPTED}.")
        yield path
    else:
        raise DataError(
            f"Data source {path} does not exist: check the path (and that this machine can see it)."
        )


def _walk(top: str) -> Iterator[str]:
    """Depth-first walk yielding image files; a stack instead of recursion so deep trees cannot overflow."""
    pending = [top]
    visited: set[tuple[int, int]] = set()
    while pending:
        folder = pending.pop()
        if not _first_visit(folder, visited):
            continue
        for entry in _scan(folder):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows symlinks; _first_visit cuts cycles
                pending.append(entry.path)
            elif has_image_extension(entry.name) and entry.is_file():
                yield entry.path


def _first_visit(folder: str, visited: set[tuple[int, int]]) -> bool:
    st = os.stat(folder)
    key = (st.st_dev, st.st_ino)
    if key in visited:
        return False
    visited.add(key)
    return True


def _scan(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise DataError(
            f"Cannot list folder {folder} ({e.strerror or e}): fix its permissions or leave it out of the data."
        ) from e
