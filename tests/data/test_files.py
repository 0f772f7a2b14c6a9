"""Tests for kubedistill.data.files.list_image_files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kubedistill.data.files import list_image_files
from kubedistill.errors import DataError


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    touch(
        tmp_path,
        "a.jpg",
        "B.PNG",
        "sub/c.webp",
        "sub/deeper/d.TIFF",
        "sub/e.Jpeg",
        ".hidden.jpg",
        ".git/f.jpg",
        "sub/.cache/g.png",
        "notes.txt",
        "sub/h.jpg.bak",
        "sub/anim.gif",
    )
    return tmp_path


def test_recursive_listing_keeps_only_visible_images(tree: Path) -> None:
    expected = sorted(
        str(tree / n) for n in ["a.jpg", "B.PNG", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.Jpeg"]
    )
    assert list_image_files(tree) == expected
    assert list_image_files(str(tree)) == expected


def test_single_file_and_lists_are_deduplicated(tree: Path) -> None:
    assert list_image_files(tree / "a.jpg") == [str(tree / "a.jpg")]
    both = list_image_files([tree / "sub", tree / "sub/c.webp", str(tree / "a.jpg")])
    assert both == sorted(str(tree / n) for n in ["a.jpg", "sub/c.webp", "sub/deeper/d.TIFF", "sub/e.Jpeg"])


def test_relative_sources_give_absolute_paths(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    files = list_image_files("sub")
    assert files[0] == str(tree / "sub/c.webp") and all(os.path.isabs(f) for f in files)


def test_a_hidden_root_folder_is_still_listed(tmp_path: Path) -> None:
    touch(tmp_path, ".data/x.jpg")
    assert list_image_files(tmp_path / ".data") == [str(tmp_path / ".data/x.jpg")]


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        list_image_files([tmp_path, tmp_path / "missing"])
    assert str(tmp_path / "missing") in str(info.value)


def test_no_images_lists_accepted_extensions(tmp_path: Path) -> None:
    touch(tmp_path, "readme.md", ".secret.jpg")
    with pytest.raises(DataError, match="No images found") as info:
        list_image_files(tmp_path)
    assert ".jpg" in str(info.value) and ".webp" in str(info.value)


def test_explicit_non_image_file_is_an_error(tree: Path) -> None:
    with pytest.raises(DataError, match="not an image file"):
        list_image_files(tree / "notes.txt")


def test_symlink_loops_do_not_repeat_files(tree: Path) -> None:
    (tree / "sub/loop").symlink_to(tree, target_is_directory=True)
    assert len(list_image_files(tree)) == 5


def test_thousands_of_files_list_fast(tmp_path: Path) -> None:
    for folder in range(4):
        sub = tmp_path / f"f{folder}"
        sub.mkdir()
        for i in range(1000):
            (sub / f"{i}.jpg").touch()
    start = time.perf_counter()
    files = list_image_files(tmp_path)
    elapsed = time.perf_counter() - start
    assert len(files) == 4000 and files == sorted(files)
    # About 0.02 s here (100k files: 0.3 s); the bound only catches pathological slowdowns on a busy machine.
    assert elapsed < 1.0, f"listing 4000 files took {elapsed:.2f} s"
