"""`kubedistill validate`: list every file, decode every candidate image fully, write a manifest and a report.

Each listed file ends up in exactly one place:

- skipped (not an error): hidden (a name below the root starts with '.') or an extension that is not an image;
- a problem: ``empty``, ``not_an_image``, ``corrupt`` (truncated or damaged data), ``decompression_bomb``
  (rejected from the header, before any pixel is allocated), ``unreadable`` (I/O error), ``too_small``
  (shorter side below ``min_size``), ``duplicate`` (same sha256 as an earlier URI in sorted order, which is
  kept; only with ``dedup``);
- the manifest: every other image, with its size, format, sha256 and (class-per-folder layouts) label.

Unusual but valid images (CMYK, grayscale, palette, 16-bit, alpha, EXIF-rotated, a PNG named .jpg) are
accepted: the training loader converts them exactly as it does here, since both use ``decode_image``.

Files are read and decoded by a pool of threads: the decoders (libjpeg-turbo, libpng, PIL) and sha256 release
the GIL, and gs:// reads spend their time waiting on the network. Results are sorted by URI, so the manifest,
the report and the fingerprint do not depend on the order in which threads finish.

The bad fraction is (problem files except duplicates) / (image candidates). Duplicates are reported and left
out of the manifest, but a dataset with copies is not a broken dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubedistill import storage
from kubedistill.config import ValidateConfig
from kubedistill.data.images import PROBLEM_KINDS, ImageDecodeError, decode_image_with_format
from kubedistill.data.manifest import (
    MANIFEST_NAME,
    ManifestEntry,
    class_folder_labels,
    encode_manifest,
    fingerprint,
)
from kubedistill.data.sources import skip_reason
from kubedistill.errors import DataError, StorageError

__all__ = ["ALL_PROBLEM_KINDS", "REPORT_FORMAT", "ValidationResult", "run_validation"]

logger = logging.getLogger(__name__)

REPORT_FORMAT = "kubedistill.validation/v1"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
ALL_PROBLEM_KINDS = (*PROBLEM_KINDS, "too_small", "duplicate")
SKIP_KINDS = ("hidden", "not_an_image_extension")
PROGRESS_EVERY_S = 10.0
_DESCRIPTIONS = {
    "empty": "empty file (0 bytes)",
    "not_an_image": "not an image / unknown format",
    "corrupt": "truncated or corrupt data",
    "decompression_bomb": "decompression bomb (absurd pixel count)",
    "unreadable": "unreadable (I/O error)",
    "too_small": "too small",
    "duplicate": "exact duplicate (same sha256)",
}


@dataclass
class ValidationResult:
    """What ``run_validation`` found and wrote."""

    passed: bool
    report: dict[str, Any]
    manifest: str  # URI of manifest.jsonl
    report_json: str
    report_md: str
    mlflow_run_id: str | None = None  # set by the API when the step was logged to MLflow

    @property
    def fingerprint(self) -> str:
        return self.report["fingerprint"]

    def summary(self) -> dict[str, Any]:
        totals = self.report["totals"]
        return {
            "passed": self.passed,
            "images_ok": totals["images_ok"],
            "bad": totals["bad"],
            "bad_fraction": totals["bad_fraction"],
            "duplicates": totals["problems"]["duplicate"],
            "fingerprint": self.fingerprint,
            "manifest": self.manifest,
            "report": self.report_json,
            "mlflow_run_id": self.mlflow_run_id,
        }


@dataclass
class _Checked:
    """One candidate after reading and decoding: either ``entry`` or (``kind``, ``reason``)."""

    uri: str
    entry: ManifestEntry | None = None
    kind: str | None = None
    reason: str | None = None


def run_validation(
    config: ValidateConfig, *, progress: Callable[[int, int], None] | None = None
) -> ValidationResult:
    """Validate ``config.data`` and write manifest.jsonl, report.json and report.md to ``config.out``.

    Raises:
        DataError: the data cannot be listed (missing path or bucket, no permission, no credentials) or the
            output cannot be written. A dataset that fails the checks is not an error: ``passed`` is False.
    """
    started = time.monotonic()
    try:
        listed = storage.list_files(config.data)
    except StorageError as e:
        raise DataError(str(e)) from e
    if not listed:
        raise DataError(f"{config.data} holds no files: check the path or the bucket prefix.")
    root = (
        config.data
        if storage.is_gcs(config.data) or not os.path.isfile(config.data)
        else os.path.dirname(os.path.abspath(config.data))
    )
    skipped: dict[str, list[str]] = {k: [] for k in SKIP_KINDS}
    candidates: list[str] = []
    for info in listed:
        reason = skip_reason(storage.relative_to(info.uri, root))
        if reason is None:
            candidates.append(info.uri)
        else:
            skipped[reason].append(info.uri)
    logger.info("%s: %d files, %d image candidates", config.data, len(listed), len(candidates))

    workers = _resolve_workers(config.workers, remote=storage.is_gcs(config.data))
    checked = sorted(
        _check_all(candidates, config, workers, progress), key=lambda c: c.uri
    )  # sorted: the output never depends on which thread finished first
    checked = _mark_small_and_duplicates(checked, config)
    good = [c.entry for c in checked if c.entry is not None]
    layout, good = _label(good, root, config.labels)

    manifest_bytes = encode_manifest(good)
    elapsed = time.monotonic() - started
    report = _report(config, listed, skipped, candidates, checked, good, layout, manifest_bytes, elapsed)
    result = ValidationResult(
        passed=report["passed"],
        report=report,
        manifest=storage.join(config.out, MANIFEST_NAME),
        report_json=storage.join(config.out, REPORT_JSON),
        report_md=storage.join(config.out, REPORT_MD),
    )
    try:
        storage.write_bytes(result.manifest, manifest_bytes, content_type="application/jsonl")
        storage.write_bytes(
            result.report_json,
            (json.dumps(report, indent=2) + "\n").encode(),
            content_type="application/json",
        )
        storage.write_bytes(result.report_md, render_markdown(report).encode(), content_type="text/markdown")
    except StorageError as e:
        raise DataError(f"Cannot write the validation output to {config.out}: {e}") from e
    logger.info("%s", report["verdict"])
    return result


def _resolve_workers(workers: int | str, *, remote: bool) -> int:
    if workers != "auto":
        return int(workers)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Local files: decoding is the work, a couple of threads per core keep the cores busy while one waits on
    # the disk. gs://: each read waits tens of ms on the network, so many more reads are kept in flight.
    return max(32, 2 * cpus) if remote else max(2, 2 * cpus)


def _check_all(
    uris: list[str], config: ValidateConfig, workers: int, progress: Callable[[int, int], None] | None
) -> Iterator[_Checked]:
    """Check every URI with ``workers`` threads, at most a few tasks per thread in flight (bounded memory for
    millions of files)."""
    total, done, bad = len(uris), 0, 0
    last_log = time.monotonic()
    started = last_log
    with ThreadPoolExecutor(workers, thread_name_prefix="validate") as pool:
        pending: deque[Future[_Checked]] = deque()
        for uri in _then_none(uris):
            if uri is not None:
                pending.append(pool.submit(_check_one, uri, config.max_pixels))
                if len(pending) < 4 * workers:
                    continue
            while pending and (uri is None or len(pending) >= 4 * workers):
                item = pending.popleft().result()
                done += 1
                bad += item.entry is None
                yield item
                now = time.monotonic()
                if progress is not None:
                    progress(done, total)
                if now - last_log >= PROGRESS_EVERY_S:
                    last_log = now
                    logger.info(
                        "validated %d/%d images (%.0f/s), %d with problems",
                        done,
                        total,
                        done / (now - started),
                        bad,
                    )


def _then_none(items: Iterable[str]) -> Iterator[str | None]:
    yield from items
    yield None  # the end: drain what is still in flight


def _check_one(uri: str, max_pixels: int) -> _Checked:
    try:
        data = storage.read_bytes(uri)
    except StorageError as e:
        return _Checked(uri, kind="unreadable", reason=_one_line(str(e)))
    try:
        image, image_format = decode_image_with_format(data, source=uri, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return _Checked(uri, kind=e.kind, reason=_one_line(e.reason))
    except Exception as e:  # a decoder bug on a hostile file must not stop the other million checks
        return _Checked(uri, kind="corrupt", reason=_one_line(f"the decoder failed: {type(e).__name__}: {e}"))
    _, height, width = image.shape
    entry = ManifestEntry(
        uri=uri,
        bytes=len(data),
        width=int(width),
        height=int(height),
        format=image_format,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return _Checked(uri, entry=entry)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _mark_small_and_duplicates(checked: list[_Checked], config: ValidateConfig) -> list[_Checked]:
    first_with: dict[str, str] = {}
    for item in checked:
        entry = item.entry
        if entry is None:
            continue
        if min(entry.width, entry.height) < config.min_size:
            item.kind = "too_small"
            item.reason = (
                f"{entry.width}x{entry.height}: the shorter side is below min_size={config.min_size}"
            )
            item.entry = None
        elif config.dedup and entry.sha256 in first_with:
            item.kind = "duplicate"
            item.reason = f"same content (sha256) as {first_with[entry.sha256]}, which is kept"
            item.entry = None
        else:
            first_with.setdefault(entry.sha256, entry.uri)
    return checked


def _label(good: list[ManifestEntry], root: str, mode: str) -> tuple[str, list[ManifestEntry]]:
    if mode == "none" or not good:
        return "none", good
    labels = class_folder_labels([storage.relative_to(e.uri, root) for e in good])
    if labels is None:
        if mode == "folder":
            raise DataError(
                f"labels=folder: {root} is not a class-per-folder layout (root/<class>/<image>, at least two "
                "class folders, no images directly in the root). Use labels=auto or labels=none."
            )
        return "none", good
    return "class_per_folder", [
        ManifestEntry(**{**e.__dict__, "label": label}) for e, label in zip(good, labels, strict=True)
    ]


def _report(
    config: ValidateConfig,
    listed: list[storage.FileInfo],
    skipped: dict[str, list[str]],
    candidates: list[str],
    checked: list[_Checked],
    good: list[ManifestEntry],
    layout: str,
    manifest_bytes: bytes,
    elapsed: float,
) -> dict[str, Any]:
    problems: dict[str, list[dict[str, str]]] = {k: [] for k in ALL_PROBLEM_KINDS}
    for item in checked:
        if item.kind is not None:
            problems[item.kind].append({"uri": item.uri, "reason": item.reason or ""})
    bad = sum(len(v) for k, v in problems.items() if k != "duplicate")
    bad_fraction = bad / len(candidates) if candidates else 1.0
    if not good:
        passed, verdict = False, f"FAILED: no valid image left out of {len(listed)} files"
    elif bad_fraction > config.max_bad_fraction:
        passed = False
        verdict = (
            f"FAILED: {bad} of {len(candidates)} images ({bad_fraction:.2%}) have problems, above "
            f"max_bad_fraction={config.max_bad_fraction:.2%}"
        )
    else:
        passed = True
        verdict = f"PASSED: {len(good)} images in the manifest; {bad} with problems ({bad_fraction:.2%})"
    return {
        "format": REPORT_FORMAT,
        "data": config.data,
        "passed": passed,
        "verdict": verdict,
        "fingerprint": fingerprint(manifest_bytes),
        "settings": {
            "min_size": config.min_size,
            "max_bad_fraction": config.max_bad_fraction,
            "dedup": config.dedup,
            "labels": config.labels,
            "max_pixels": config.max_pixels,
        },
        "totals": {
            "files_seen": len(listed),
            "skipped": sum(len(v) for v in skipped.values()),
            "candidates": len(candidates),
            "images_ok": len(good),
            "bad": bad,
            "bad_fraction": round(bad_fraction, 6),
            "bytes_ok": sum(e.bytes for e in good),
            "problems": {k: len(v) for k, v in problems.items()},
            "skipped_by_reason": {k: len(v) for k, v in skipped.items()},
        },
        "labels": {
            "layout": layout,
            "classes": dict(sorted(Counter(e.label for e in good if e.label).items())),
        },
        "formats": dict(sorted(Counter(e.format for e in good).items())),
        "problems": problems,
        "skipped": skipped,
        "elapsed_s": round(elapsed, 3),
        "images_per_second": round(len(candidates) / elapsed, 1) if elapsed > 0 else None,
    }


def render_markdown(report: dict[str, Any], *, examples: int = 5) -> str:
    """The report for people (shown in the KFP UI): verdict, a table of counts with an example each, details."""
    totals = report["totals"]
    lines = [
        "# Dataset validation",
        "",
        f"**{report['verdict']}**",
        "",
        f"- data: `{report['data']}`",
        f"- fingerprint: `{report['fingerprint']}`",
        f"- files seen: {totals['files_seen']} (skipped {totals['skipped']}: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in totals["skipped_by_reason"].items())
        + ")",
        f"- image candidates: {totals['candidates']}, in the manifest: {totals['images_ok']} "
        f"({totals['bytes_ok'] / 1e6:.1f} MB)",
        f"- checked at {report['images_per_second']} images/s in {report['elapsed_s']} s",
        "",
        "| problem | files | example |",
        "|---|---:|---|",
    ]
    for kind in ALL_PROBLEM_KINDS:
        found = report["problems"][kind]
        example = f"`{found[0]['uri']}`: {found[0]['reason']}" if found else ""
        lines.append(f"| {_DESCRIPTIONS[kind]} | {len(found)} | {_cell(example)} |")
    for kind in ALL_PROBLEM_KINDS:
        found = report["problems"][kind]
        if not found:
            continue
        lines += ["", f"## {_DESCRIPTIONS[kind]} ({len(found)})", ""]
        lines += [f"- `{p['uri']}`: {p['reason']}" for p in found[:examples]]
        if len(found) > examples:
            lines.append(f"- ... and {len(found) - examples} more (all are in report.json)")
    if report["formats"]:
        lines += ["", "## Formats", "", "| format | images |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in report["formats"].items()]
    classes = report["labels"]["classes"]
    if classes:
        lines += [
            "",
            f"## Classes ({len(classes)}, from the folder layout)",
            "",
            "| class | images |",
            "|---|---:|",
        ]
        shown = sorted(classes.items(), key=lambda kv: -kv[1])[:20]
        lines += [f"| {_cell(k)} | {v} |" for k, v in shown]
        if len(classes) > 20:
            lines.append(f"| ... {len(classes) - 20} more | |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
