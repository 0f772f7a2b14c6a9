"""Does a bf16 student hurt the loss curve? Same run in fp32 and in bf16 autocast, compared step by step.

A random DINOv2 teacher gives nearly the same vector for every image, which makes any loss curve flat and
meaningless, so this uses a teacher with image-dependent features: a randomly initialised, frozen
torchvision resnet18 saved as a TorchScript teacher. The data are scikit-learn's digits (real images).
Each precision runs in its own process with the same seed; the table prints the loss at chosen steps and the
mean relative difference of the two curves.

    .venv/bin/python benchmarks/precision_loss_curve.py [--steps 120] [--precisions 32-true,bf16-teacher,bf16-mixed]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from kubedistill.devtools.digits import write_digits


def make_teacher(path: Path) -> None:
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    torch.jit.script(backbone.eval()).save(str(path))


def run(precision: str, args: argparse.Namespace, data: Path, teacher: Path, out: Path) -> list[dict]:
    code = (
        "import warnings; warnings.simplefilter('ignore'); import kubedistill, sys, json; "
        f"kubedistill.train(out={str(out)!r}, data={str(data)!r}, model='torchvision/resnet18', "
        f"method_args={{'teacher': {str(teacher)!r}}}, transform_args={{'image_size': [{args.image_size}, {args.image_size}]}}, "
        f"batch_size={args.batch_size}, max_steps={args.steps}, epochs=1000, precision={precision!r}, "
        "num_workers=0, accelerator='cpu', log_every_n_steps=1, overwrite=True, seed=0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{precision} failed:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--precisions", default="32-true,bf16-teacher,bf16-mixed")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory(prefix="kubedistill-prec-") as tmp:
        root = Path(tmp)
        write_digits(root / "digits")
        make_teacher(root / "teacher.pt")
        curves = {p: run(p, args, root / "digits", root / "teacher.pt", root / p) for p in precisions}
    reference = [r["loss"] for r in curves[precisions[0]]]
    print(f"\n### Loss curve by precision: resnet18 student, frozen random resnet18 TorchScript teacher, digits, "
          f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} steps")
    print(f"- command: `python benchmarks/precision_loss_curve.py {' '.join(sys.argv[1:])}`".replace(" `", " `", 1))
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"date: {datetime.date.today().isoformat()}")
    print()
    marks = sorted({1, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps})
    print("| precision | " + " | ".join(f"loss @ {m}" for m in marks) + " | mean of last 10 | images/s | "
          f"mean rel. diff vs {precisions[0]} |")
    print("|---|" + "---:|" * (len(marks) + 3))
    for p, records in curves.items():
        losses = [r["loss"] for r in records]
        diff = statistics.mean(abs(a - b) / b for a, b in zip(losses, reference, strict=True))
        speed = statistics.median(r["images_per_second"] for r in records[2:])
        print(f"| {p} | " + " | ".join(f"{losses[m - 1]:.4f}" for m in marks)
              + f" | {statistics.mean(losses[-10:]):.4f} | {speed:.1f} | {diff:.2%} |")


if __name__ == "__main__":
    main()
