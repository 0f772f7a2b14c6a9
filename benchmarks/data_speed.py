"""Data-layer throughput: validation, the training loader, and staging vs streaming gs:// images.

On one set of generated JPEGs (2,000 by default, 500x375 like a typical photo dataset), in one run:

1. Validation, images/s: `kubedistill validate` (parallel threads: full decode + sha256 + checks) against a
   plain sequential PIL loop (open + full decode + RGB), from a local folder and from a GCS emulator
   (fake-gcs-server on 127.0.0.1, the real google-cloud-storage client).
2. Loader, images/s per worker: decode + the default augmentations at 224 through one DataLoader worker, for
   kubedistill's ImageDataset (torchvision/libjpeg-turbo decode, uint8 tensor augmentations) and a plain
   PIL + torchvision.transforms pipeline with the same augmentations.
3. gs:// training input: staging all images to local disk in parallel, then reading them, against streaming
   each image from the bucket in the loader.

    .venv/bin/python benchmarks/data_speed.py [--images 2000] [--loader-images 512]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset


def make_jpegs(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"class{i % 10}" / f"{i:05d}.jpg"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            base = rng.random((6, 8, 3))
            pixels = np.kron(base, np.ones((63, 63, 1)))[:375, :500] + 0.15 * rng.random((375, 500, 3))
            Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# --- 1. validation ----------------------------------------------------------------------------------------------


def pil_loop(paths: list[Path]) -> int:
    ok = 0
    for path in paths:
        try:
            with Image.open(path) as image:
                image.convert("RGB").load()
            ok += 1
        except OSError:
            pass
    return ok


def pil_loop_gcs(bucket, names: list[str]) -> int:
    import io

    ok = 0
    for name in names:
        data = bucket.blob(name).download_as_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.convert("RGB").load()
        ok += 1
    return ok


# --- 2. loader --------------------------------------------------------------------------------------------------


class PilDataset(Dataset):
    """The obvious alternative: PIL decode + torchvision.transforms (v1) on PIL images, same augmentations."""

    def __init__(self, paths: list[Path], size: int = 224):
        from torchvision import transforms as T

        self.paths = paths
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.14, 1.0)),
                T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(0.2),
                T.Lambda(lambda im: im.filter(ImageFilter.GaussianBlur(random.uniform(0.0, 0.1)))),
                T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def loader_rate(dataset, workers: int, batch: int = 32, warmup_batches: int = 2) -> float:
    """Images/s over all batches after the first ``warmup_batches`` (worker start-up excluded)."""
    from kubedistill.data.datasets import ImageDataset, collate

    is_ours = isinstance(dataset, ImageDataset)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        num_workers=workers,
        shuffle=False,
        collate_fn=collate if is_ours else None,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    seen, start = 0, time.perf_counter()
    for i, batch_data in enumerate(loader):
        images = batch_data["image"] if isinstance(batch_data, dict) else batch_data
        if i >= warmup_batches:
            seen += images.shape[0]
        if i == warmup_batches - 1:  # the clock starts once the warm-up batches are in hand
            start = time.perf_counter()
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--loader-images", type=int, default=512)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "kubedistill-bench-data"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # a loader worker is single-threaded; keep the in-process comparison equal

    import kubedistill
    from kubedistill.data.datasets import ImageDataset
    from kubedistill.data.remote import ImageReader, stage
    from kubedistill.data.transforms import DistillationTransform, DistillationTransformArgs
    from kubedistill.devtools.gcs_emulator import GcsEmulator

    root = Path(args.folder)
    paths = make_jpegs(root / "images", args.images)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    rows: list[tuple[str, str, str]] = []
    n = len(paths)

    # 1. validation, local (after one warm-up pass over a tenth of the images: imports, decoder set-up)
    kubedistill.validate(data=paths[0].parent, out=root / "warm-up")
    pil_loop(paths[: n // 10])
    t_pil, ok = timed(lambda: pil_loop(paths))
    assert ok == n
    rows.append(("validate, local", "sequential PIL loop (open + decode)", f"{n / t_pil:.0f}"))
    for workers in ("auto", 1):
        out = root / f"validated-{workers}"
        t_kd, result = timed(lambda w=workers, o=out: kubedistill.validate(data=root / "images", out=o, workers=w))
        assert result.report["totals"]["images_ok"] == n
        label = "kubedistill validate (decode + sha256 + checks), " + (
            "auto threads (2 per CPU)" if workers == "auto" else "1 thread"
        )
        rows.append(("validate, local", label, f"{n / t_kd:.0f}"))

    # 1b/3. gs:// through the emulator
    with GcsEmulator() as url:
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from google.cloud import storage as gcs

        bucket = gcs.Client(project="bench").create_bucket("bench")
        names = []
        for path in paths:
            name = f"images/{path.relative_to(root / 'images').as_posix()}"
            bucket.blob(name).upload_from_filename(str(path))
            names.append(name)
        t_pil_gs, _ = timed(lambda: pil_loop_gcs(bucket, names))
        rows.append(("validate, gs:// (emulator)", "sequential loop: download + PIL decode", f"{n / t_pil_gs:.0f}"))
        t_kd_gs, result = timed(
            lambda: kubedistill.validate(data="gs://bench/images", out=str(root / "validated-gs"))
        )
        assert result.report["totals"]["images_ok"] == n
        rows.append(("validate, gs:// (emulator)", "kubedistill validate, auto threads", f"{n / t_kd_gs:.0f}"))

        # 3. staging vs streaming
        uris = [f"gs://bench/{name}" for name in names]
        transform = DistillationTransform(DistillationTransformArgs())
        cache = Path(tempfile.mkdtemp(prefix="stage-", dir=root))
        t_stage, stats = timed(lambda: stage(uris, cache))
        assert stats.downloaded == n
        rows.append(("gs:// input", f"stage {n} images to local disk (32 parallel reads)", f"{n / t_stage:.0f}"))
        subset = uris[: args.loader_images]
        for workers in (0, 2):
            staged = loader_rate(ImageDataset(subset, transform, loader=ImageReader(cache)), workers)
            streamed = loader_rate(ImageDataset(subset, transform, loader=ImageReader()), workers)
            rows.append(("gs:// input", f"loader from the staged copy, {workers} workers", f"{staged:.1f}"))
            rows.append(("gs:// input", f"loader streaming from the bucket, {workers} workers", f"{streamed:.1f}"))

    # 2. loader per worker, local files
    subset_paths = paths[: args.loader_images]
    ours = ImageDataset([str(p) for p in subset_paths], DistillationTransform(DistillationTransformArgs()))
    theirs = PilDataset(subset_paths)
    for workers in (1, 2):
        rate_ours = loader_rate(ours, workers)
        rate_theirs = loader_rate(theirs, workers)
        per = f"{workers} worker" + ("s" if workers > 1 else "")
        rows.append(("loader, 224, default augmentations", f"kubedistill ImageDataset, {per}", f"{rate_ours:.1f}"))
        rows.append(("loader, 224, default augmentations", f"PIL + torchvision.transforms, {per}", f"{rate_theirs:.1f}"))

    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}), torch {torch.__version__}, "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"data: {n} JPEGs 500x375, {megabytes:.0f} MB; loader rows use the first {args.loader_images}\n")
    print("| measurement | variant | images/s |")
    print("|---|---|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
