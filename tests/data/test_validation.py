"""`kubedistill validate` on a generated corpus holding every problem kind and every unusual-but-valid kind,
from a local folder and from a real GCS emulator (fake-gcs-server) through the real google-cloud-storage
client; then training from the raw folder, from the manifest, and from a gs:// manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

import kubedistill
from kubedistill.cli import EXIT_DATA_REJECTED, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from kubedistill.data.manifest import fingerprint, read_manifest
from kubedistill.data.validation import ALL_PROBLEM_KINDS
from kubedistill.errors import ConfigError, DataError

LENIENT = {"max_bad_fraction": 0.5}  # the corpus is ~17% bad on purpose


def _buckets(report: dict, root: str) -> dict[str, set[str]]:
    """Relative path -> bucket, from report.json (problems and skips) and the manifest (ok)."""
    found: dict[str, set[str]] = {}
    prefix = root.rstrip("/") + "/"
    for kind, items in report["problems"].items():
        for item in items:
            found.setdefault(kind, set()).add(item["uri"].removeprefix(prefix))
    for kind, uris in report["skipped"].items():
        for uri in uris:
            found.setdefault(kind, set()).add(uri.removeprefix(prefix))
    return {k: v for k, v in found.items() if v}


def _check_result(result, corpus, root: str, *, remote: bool) -> None:
    expected = corpus.by_kind(remote=remote)
    report = result.report
    manifest = read_manifest(result.manifest)
    prefix = root.rstrip("/") + "/"
    ok = {e.uri.removeprefix(prefix) for e in manifest}
    assert ok == expected.pop("ok")
    assert _buckets(report, root) == expected
    assert set(report["totals"]["problems"]) == set(ALL_PROBLEM_KINDS)
    for entry in manifest:
        rel = entry.uri.removeprefix(prefix)
        assert (entry.width, entry.height) == corpus.sizes[rel], rel
        assert entry.format == corpus.formats[rel], rel
        assert entry.sha256 == hashlib.sha256(corpus.files[rel]).hexdigest()
        assert entry.bytes == len(corpus.files[rel])
        assert entry.label == rel.split("/")[0]
    totals = report["totals"]
    assert totals["files_seen"] == sum(len(v) for v in corpus.by_kind(remote=remote).values())
    assert totals["images_ok"] == len(ok)
    assert totals["bad"] == sum(len(v) for k, v in expected.items() if k in ALL_PROBLEM_KINDS and k != "duplicate")
    assert report["labels"] == {
        "layout": "class_per_folder",
        "classes": {c: sum(1 for r in ok if r.startswith(c + "/")) for c in ("cats", "dogs")},
    }
    assert report["fingerprint"] == fingerprint(kubedistill.storage.read_bytes(result.manifest))


def test_every_local_file_lands_in_its_bucket(tmp_path: Path, corpus) -> None:
    root = corpus.write(tmp_path / "data")
    result = kubedistill.validate(data=root, out=tmp_path / "out", **LENIENT)
    assert result.passed
    _check_result(result, corpus, str(root), remote=False)
    duplicate = result.report["problems"]["duplicate"][0]
    assert duplicate["uri"].endswith("dogs/copy_of_cat.jpg") and "cats/cats_000.jpg" in duplicate["reason"]
    bomb = result.report["problems"]["decompression_bomb"][0]["reason"]
    assert "decompression bomb" in bomb
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**PASSED" in md and "| decompression bomb (absurd pixel count) | 1 |" in md
    assert "| exact duplicate (same sha256) | 1 |" in md and "## Classes (2" in md


def test_default_threshold_rejects_the_corpus_with_exit_3(tmp_path: Path, corpus, capsys) -> None:
    root = corpus.write(tmp_path / "data")
    code = main(["validate", f"data={root}", f"out={tmp_path / 'out'}"])
    assert code == EXIT_DATA_REJECTED == 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["passed"] is False and summary["bad"] == 7 and summary["duplicates"] == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"].startswith("FAILED: 7 of 42 images")
    # Everything is still written, so the user sees why (and a lenient rerun can reuse nothing stale).
    assert len(read_manifest(str(tmp_path / "out" / "manifest.jsonl"))) == summary["images_ok"] == 34


def test_nothing_valid_left_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jpg").write_bytes(b"")
    (tmp_path / "data" / "b.png").write_bytes(b"not a png")
    result = kubedistill.validate(data=tmp_path / "data", out=tmp_path / "out", max_bad_fraction=1.0)
    assert not result.passed and result.report["verdict"].startswith("FAILED: no valid image")
    assert (tmp_path / "out" / "manifest.jsonl").read_bytes() == b""


def test_rerun_gives_the_same_manifest_and_fingerprint(tmp_path: Path, corpus) -> None:
    root = corpus.write(tmp_path / "data")
    first = kubedistill.validate(data=root, out=tmp_path / "a", workers=1, **LENIENT)
    second = kubedistill.validate(data=root, out=tmp_path / "b", workers=7, **LENIENT)
    assert (tmp_path / "a" / "manifest.jsonl").read_bytes() == (tmp_path / "b" / "manifest.jsonl").read_bytes()
    assert first.fingerprint == second.fingerprint
    Image.new("RGB", (50, 40), (200, 10, 10)).save(root / "cats" / "extra.jpg")  # one new image
    third = kubedistill.validate(data=root, out=tmp_path / "a", **LENIENT)
    assert third.fingerprint != first.fingerprint


def test_dedup_off_keeps_exact_copies(tmp_path: Path, corpus) -> None:
    root = corpus.write(tmp_path / "data")
    result = kubedistill.validate(data=root, out=tmp_path / "out", dedup=False, **LENIENT)
    uris = {e.uri for e in read_manifest(result.manifest)}
    assert str(root / "dogs" / "copy_of_cat.jpg") in uris and str(root / "cats" / "cats_000.jpg") in uris
    assert result.report["totals"]["problems"]["duplicate"] == 0 and len(uris) == 35


def test_labels_modes(tmp_path: Path, corpus) -> None:
    root = corpus.write(tmp_path / "data")
    unlabeled = kubedistill.validate(data=root, out=tmp_path / "none", labels="none", **LENIENT)
    assert {e.label for e in read_manifest(unlabeled.manifest)} == {None}
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "one.jpg").write_bytes(corpus.files["cats/cats_001.jpg"])
    (flat / "two.jpg").write_bytes(corpus.files["cats/cats_002.jpg"])
    auto = kubedistill.validate(data=flat, out=tmp_path / "flat_out")
    assert auto.report["labels"]["layout"] == "none"
    assert {e.label for e in read_manifest(auto.manifest)} == {None}
    with pytest.raises(DataError, match="labels=folder: .* is not a class-per-folder layout"):
        kubedistill.validate(data=flat, out=tmp_path / "flat_out2", labels="folder")


def test_bad_arguments_and_missing_data(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as info:
        kubedistill.validate(data=tmp_path, out=tmp_path / "o", min_size=0, max_bad_fraction=2, labels="guess")
    problems = "\n".join(info.value.problems)
    assert "min_size" in problems and "max_bad_fraction" in problems and "labels" in problems
    assert main(["validate", f"data={tmp_path / 'nope'}", f"out={tmp_path / 'o'}"]) == EXIT_FAILURE
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["validate", f"out={tmp_path / 'o'}"]) == EXIT_USAGE
    assert "missing required key(s) data" in capsys.readouterr().err
    assert main(["validate", f"data={tmp_path / 'x' / 'manifest.jsonl'}", "out=o"]) == EXIT_USAGE
    assert not (tmp_path / "o").exists()


def test_validate_and_write_on_gcs(tmp_path: Path, corpus, gcs_bucket) -> None:
    corpus.upload(gcs_bucket, "corpus")
    root = f"gs://{gcs_bucket.name}/corpus"
    out = f"gs://{gcs_bucket.name}/validated"
    code = main(["validate", f"data={root}", f"out={out}", "max_bad_fraction=0.5"])
    assert code == EXIT_OK
    report = json.loads(gcs_bucket.blob("validated/report.json").download_as_bytes())
    result = kubedistill.data.validation.ValidationResult(
        passed=report["passed"],
        report=report,
        manifest=f"{out}/manifest.jsonl",
        report_json=f"{out}/report.json",
        report_md=f"{out}/report.md",
    )
    _check_result(result, corpus, root, remote=True)
    assert all(e.uri.startswith(root + "/") for e in read_manifest(result.manifest))
    assert gcs_bucket.blob("validated/report.md").download_as_text().startswith("# Dataset validation")


def test_gcs_errors_name_the_bucket_and_the_fix(tmp_path: Path, gcs_bucket) -> None:
    with pytest.raises(DataError, match="the bucket 'no-such-bucket' does not exist"):
        kubedistill.validate(data="gs://no-such-bucket/images", out=tmp_path / "o")
    with pytest.raises(DataError, match=f"gs://{gcs_bucket.name}/empty holds no files"):
        kubedistill.validate(data=f"gs://{gcs_bucket.name}/empty", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


# --- training from what validation produced ----------------------------------------------------------------------

FAST = {
    "model": "torchvision/resnet18",
    "method_args": {"teacher": "dinov2/vits14", "teacher_weights": "none", "queue_size": 8},
    "transform_args": {"image_size": [28, 28]},
    "batch_size": 8,
    "num_workers": 0,
    "accelerator": "cpu",
    "epochs": 1,
}


def test_training_from_the_raw_folder_and_from_the_manifest(tmp_path: Path, corpus) -> None:
    root = corpus.write(tmp_path / "data")
    raw = kubedistill.train(out=tmp_path / "raw", data=root, loader_args=LENIENT, **FAST)
    # The raw folder still holds the bad files (the dangling link is not listed, the small image and the copy
    # are usable): each undecodable one was replaced by another image and counted.
    assert raw.steps == 41 // 8 and raw.failed_images == 5
    validated = kubedistill.validate(data=root, out=tmp_path / "v", **LENIENT)
    clean = kubedistill.train(out=tmp_path / "clean", data=validated.manifest, **FAST)
    assert clean.steps == 34 // 8 and clean.failed_images == 0
    resolved = (tmp_path / "clean" / "config.yaml").read_text()
    assert validated.fingerprint in resolved


@pytest.mark.parametrize("remote", ["stage", "stream"])
def test_training_from_a_gcs_manifest(tmp_path: Path, corpus, gcs_bucket, monkeypatch, remote: str) -> None:
    corpus.upload(gcs_bucket, "corpus")
    validated = kubedistill.validate(
        data=f"gs://{gcs_bucket.name}/corpus", out=f"gs://{gcs_bucket.name}/v", **LENIENT
    )
    cache = tmp_path / "cache"
    result = kubedistill.train(
        out=tmp_path / "run",
        data=validated.manifest,
        loader_args={"remote": remote, "cache_dir": str(cache)},
        **FAST,
    )
    assert result.steps == 34 // 8 and result.failed_images == 0
    staged = [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(staged) == (34 if remote == "stage" else 0)
    assert f"remote_data: {remote}" in (tmp_path / "run" / "config.yaml").read_text()
