"""Training throughput and peak memory of `kubedistill train`, one variant per child process.

Default: resnet18 student + dinov2/vitb14 teacher (random weights, the official architecture) at 224x224,
global batch 32, on generated JPEGs, comparing fp32, the teacher in bf16 autocast, and precision=auto (with a
DataLoader worker process, and with the glibc allocator tuning off). On a CPU without native bf16 the explicit
bf16 variant is left out unless named (auto is fp32 there). Each variant runs in a fresh process so that its
peak RSS is its own. Images/s is measured over the steps after the first `--warmup` ones.

    .venv/bin/python benchmarks/train_speed.py [--steps 8] [--warmup 2] [--variants "fp32;bf16 teacher, fp32 student"]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_name, default_variants
from PIL import Image

VARIANTS = {
    # name: (precision, loader workers, extra environment)
    "fp32": ("32-true", "auto", {}),
    "bf16 teacher, fp32 student": ("bf16-teacher", "auto", {}),
    "precision auto (the default: bf16-mixed with native bf16, else fp32)": ("auto", "auto", {}),
    "precision auto, 1 loader worker": ("auto", "1", {}),
    "precision auto, malloc untuned": ("auto", "auto", {"KUBEDISTILL_MALLOC_TUNING": "0"}),
}


def make_images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            base = rng.random((8, 8, 3))
            pixels = np.kron(base, np.ones((40, 40, 1))) + 0.1 * rng.random((320, 320, 3))
            Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path, quality=90)


def run_child(args: argparse.Namespace) -> None:
    """Train in this process and print one JSON line: per-step throughput and peak RSS."""
    import warnings

    warnings.simplefilter("ignore")
    import kubedistill

    out = Path(args.out)
    start = time.perf_counter()
    kubedistill.train(
        out=out,
        data=args.data,
        model=args.model,
        method_args={"teacher": args.teacher, "teacher_weights": "none"},
        transform_args={"image_size": [args.image_size, args.image_size]},
        batch_size=args.batch_size,
        max_steps=args.steps,
        epochs=1000,
        precision=args.precision,
        num_workers=args.num_workers if args.num_workers == "auto" else int(args.num_workers),
        accelerator="cpu",
        log_every_n_steps=1,
        overwrite=True,
    )
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = [r["images_per_second"] for r in records[args.warmup :]]
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "images_per_second": statistics.median(measured),
                "images_per_second_mean": len(measured) * args.batch_size / sum(args.batch_size / v for v in measured),
                "peak_rss_mib": peak_self,
                "peak_worker_rss_mib": peak_children,
                "wall_s": wall,
                "final_loss": records[-1]["loss"],
            }
        )
    )


def run_variant(name: str, args: argparse.Namespace, data: Path, workdir: Path) -> dict:
    precision, workers, extra_env = VARIANTS[name]
    command = [
        sys.executable, __file__, "--child", "--data", str(data), "--out", str(workdir / name.replace(" ", "_")),
        "--precision", precision, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--model", args.model,
        "--teacher", args.teacher, "--num-workers", workers,
    ]  # fmt: skip
    env = {**os.environ, **extra_env}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"variant {name!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="torchvision/resnet18")
    parser.add_argument("--teacher", default="dinov2/vitb14")
    parser.add_argument("--num-workers", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=None, help="';'-separated, from: " + "; ".join(VARIANTS) +
                        " (default: all; the explicit bf16 ones only on a CPU with native bf16)")  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per variant, interleaved (this VM's speed drifts between runs)"
    )
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    names = [v.strip() for v in args.variants.split(";")] if args.variants else default_variants(VARIANTS, lambda v: v[0])
    with tempfile.TemporaryDirectory(prefix="kubedistill-bench-") as tmp:
        data = Path(tmp) / "images"
        make_images(data, args.batch_size * (args.steps + 1))
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names:
                runs[name].append(run_variant(name, args, data, Path(tmp) / str(repeat)))
                print(f"{name} (run {repeat + 1}): {json.dumps(runs[name][-1])}", flush=True)
    results = {name: {**_median_run(r), "per_run": [x["images_per_second"] for x in r]} for name, r in runs.items()}
    print_table(args, results)


def _median_run(runs: list[dict]) -> dict:
    """Per key, the median over repeated runs (for two runs: their mean)."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def print_table(args: argparse.Namespace, results: dict[str, dict]) -> None:
    command = "make bench-train" if len(sys.argv) == 1 else "python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    print(f"\n### Training step: {args.model} student + {args.teacher} teacher (random weights), "
          f"{args.image_size}x{args.image_size}, global batch {args.batch_size}, CPU")
    print(f"- command: `{command}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; torch {_torch_version()}")
    print(f"- date: {datetime.date.today().isoformat()}; {args.steps} steps per run, median over steps "
          f"{args.warmup + 1}-{args.steps}; {args.repeats} interleaved runs per variant, median of runs")
    print()
    print("| variant | images/s | images/s per run | peak RSS main (MiB) | peak RSS workers (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        per_run = ", ".join(f"{v:.2f}" for v in r["per_run"])
        print(f"| {name} | {r['images_per_second']:.2f} | {per_run} | "
              f"{r['peak_rss_mib']:.0f} | {r['peak_worker_rss_mib']:.0f} |")
    if "fp32" in results:
        print()
        for name, r in results.items():
            print(f"- {name}: {r['images_per_second'] / results['fp32']['images_per_second']:.2f}x fp32")


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
