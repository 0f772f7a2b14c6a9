"""Data sources: folders, gs:// prefixes and manifests as training input; labels for the probe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import kubedistill
from kubedistill.data.manifest import load_labeled, read_manifest
from kubedistill.data.sources import resolve_images
from kubedistill.errors import DataError


@pytest.fixture
def validated(tmp_path: Path, corpus):
    root = corpus.write(tmp_path / "data")
    return root, kubedistill.validate(data=root, out=tmp_path / "v", max_bad_fraction=0.5)


def test_a_manifest_gives_uris_sizes_checksums_and_its_fingerprint(validated) -> None:
    root, result = validated
    images = resolve_images(result.manifest)
    entries = read_manifest(result.manifest)
    assert images.uris == [e.uri for e in entries] == sorted(images.uris)
    assert images.sizes == [e.bytes for e in entries] and images.sha256 == [e.sha256 for e in entries]
    assert images.fingerprint == result.fingerprint and not images.remote
    assert resolve_images([result.manifest, result.manifest]).uris == images.uris  # no duplicates
    with pytest.raises(DataError, match="mixes manifests"):
        resolve_images([result.manifest, str(root)])


def test_malformed_manifests_name_the_line(tmp_path: Path, validated) -> None:
    _, result = validated
    lines = Path(result.manifest).read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 2 is not JSON"):
        resolve_images(str(bad))
    record = json.loads(lines[0])
    del record["sha256"]
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match="line 1 lacks sha256"):
        resolve_images(str(bad))
    bad.write_text(json.dumps({**json.loads(lines[0]), "width": "wide"}) + "\n")
    with pytest.raises(DataError, match="width='wide' should be of type int"):
        resolve_images(str(bad))
    bad.write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        resolve_images(str(bad))
    with pytest.raises(DataError, match="Cannot read the manifest .*missing.jsonl"):
        resolve_images(str(tmp_path / "missing.jsonl"))


def test_labels_from_a_manifest_and_from_class_folders(tmp_path: Path, validated, corpus) -> None:
    root, result = validated
    uris, labels = load_labeled(result.manifest)
    assert len(uris) == 34 and set(labels) == {"cats", "dogs"}
    assert all(u.split("/")[-2] == label for u, label in zip(uris, labels, strict=True))
    folder_uris, folder_labels = load_labeled(str(root))  # the raw folder: every image file, no validation
    assert len(folder_uris) == 41 and set(folder_labels) == {"cats", "dogs"}
    unlabeled = kubedistill.validate(data=root, out=tmp_path / "u", labels="none", max_bad_fraction=0.5)
    with pytest.raises(DataError, match="34 of 34 images in the manifest .* have no label"):
        load_labeled(unlabeled.manifest)
    with pytest.raises(DataError, match="not a class-per-folder layout"):
        load_labeled(str(root / "cats"))


def test_labels_from_gcs_class_folders(corpus, gcs_bucket) -> None:
    corpus.upload(gcs_bucket, "train")
    uris, labels = load_labeled(f"gs://{gcs_bucket.name}/train")
    assert len(uris) == 41 and {u.split("/")[-2] for u in uris} == {"cats", "dogs"}
    assert labels == [u.split("/")[-2] for u in uris]
    assert resolve_images(f"gs://{gcs_bucket.name}/train").remote_bytes == sum(
        len(corpus.files[rel]) for rel, kind in corpus.expected.items()
        if kind not in ("hidden", "not_an_image_extension") and corpus.files[rel] is not None
    )  # fmt: skip
