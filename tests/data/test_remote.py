"""Staging gs:// images to the node's disk, and reading them back (emulator + the real client)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from kubedistill.data.images import ImageDecodeError, decode_image
from kubedistill.data.remote import ImageReader, cache_path, choose_remote_mode, stage


@pytest.fixture
def uploaded(gcs_bucket, corpus) -> tuple[list[str], list[bytes]]:
    names = [rel for rel, kind in corpus.expected.items() if kind == "ok"][:6]
    for rel in names:
        gcs_bucket.blob(f"img/{rel}").upload_from_string(corpus.files[rel])
    return [f"gs://{gcs_bucket.name}/img/{rel}" for rel in names], [corpus.files[rel] for rel in names]


def test_stage_downloads_once_checks_sha256_and_reads_back(tmp_path: Path, uploaded, gcs_bucket) -> None:
    uris, contents = uploaded
    sha = [hashlib.sha256(c).hexdigest() for c in contents]
    sha[1] = "0" * 64  # as if the object changed since validation
    local = str(tmp_path / "local.png")
    Path(local).write_bytes(contents[0])
    first = stage([*uris, local], tmp_path / "cache", sizes=[len(c) for c in contents] + [0], sha256=sha + ["-"])
    assert (first.files, first.downloaded, first.failed, first.cached) == (6, 5, 1, 0)  # local paths are left alone
    assert first.bytes == sum(len(c) for i, c in enumerate(contents) if i != 1)
    assert not cache_path(tmp_path / "cache", uris[1]).exists()  # a mismatching download is not kept
    assert cache_path(tmp_path / "cache", uris[0]).read_bytes() == contents[0]
    again = stage(uris, tmp_path / "cache", sizes=[len(c) for c in contents])
    assert (again.downloaded, again.cached) == (1, 5)  # only the one that was not kept is fetched again

    reader = ImageReader(tmp_path / "cache")
    gcs_bucket.blob(uris[0].split("/", 3)[3]).delete()  # staged: the bucket is no longer needed for it
    assert torch.equal(reader(uris[0]), decode_image(contents[0]))
    assert torch.equal(reader(local), decode_image(contents[0]))
    cache_path(tmp_path / "cache", uris[2]).unlink()  # not staged: read from the bucket
    assert torch.equal(reader(uris[2]), decode_image(contents[2]))
    with pytest.raises(ImageDecodeError) as info:
        reader(uris[0].replace("/img/", "/nope/"))
    assert info.value.kind == "unreadable" and "/nope/" in info.value.source


def test_auto_stages_when_the_data_fits_and_streams_otherwise(tmp_path: Path) -> None:
    assert choose_remote_mode("auto", 10_000, tmp_path) == "stage"
    assert choose_remote_mode("auto", None, tmp_path) == "stage"
    assert choose_remote_mode("auto", 1 << 60, tmp_path) == "stream"  # an exabyte does not fit
    assert choose_remote_mode("stream", 10, tmp_path) == "stream"
    assert choose_remote_mode("stage", 1 << 60, tmp_path) == "stage"
