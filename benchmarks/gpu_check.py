"""GPU check: training speed and FLOP utilisation on one NVIDIA GPU (CUDA).

resnet50 student + dinov2/vitb14 teacher (random weights, the official architecture), 224x224, global batch
256, bf16-mixed, one GPU: `kubedistill.train` for ``--steps`` steps on generated JPEGs (images/s over the steps
after ``--warmup``, peak GPU memory, whether the loader keeps up), then the per-phase FLOP breakdown of
benchmarks/flops_breakdown.py on the GPU (matmul peak fp32/bf16, teacher forward, student forward+backward).
Prints one table in BENCHMARKS.md's format; writes it to ``--out``/gpu_check.md too.

Needs a Python whose torch is a CUDA build, with torchvision, timm, pyyaml, tqdm and pillow, and the project
installed or the source tree on PYTHONPATH (nothing is downloaded: the teacher's weights are random), e.g.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train_run(args: argparse.Namespace, data: Path, out: Path) -> dict:
    import torch

    import kubedistill

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    kubedistill.train(
        out=out, data=data, model=args.model, method_args={"teacher": args.teacher, "teacher_weights": "none"},
        batch_size=args.batch_size, max_steps=args.steps, epochs=1000, precision="bf16-mixed",
        accelerator="cuda", log_every_n_steps=1, overwrite=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_second"] for r in records[args.warmup :]]
    return {"images_per_second": statistics.median(speeds), "min": min(speeds), "max": max(speeds),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20, "wall_s": wall,
            "final_loss": records[-1]["loss"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision/resnet50")
    parser.add_argument("--teacher", default="dinov2/vitb14")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.md (the table)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    sys.path.insert(0, str(HERE))
    from train_speed import make_images

    lines = []
    with tempfile.TemporaryDirectory(prefix="kubedistill-gpu-") as tmp:
        data = Path(tmp) / "images"
        make_images(data, args.batch_size * (args.steps + 1))
        run = train_run(args, data, Path(tmp) / "run")
    command = [sys.executable, str(HERE / "flops_breakdown.py"), "--device", "cuda", "--model", args.model,
               "--teacher", args.teacher, "--batch-size", str(args.batch_size), "--product-steps", "0",
               "--matmul-size", "8192"]  # fmt: skip
    flops = subprocess.run(command, capture_output=True, text=True, check=False)
    lines.append(f"### GPU check: {args.model} + {args.teacher} (random weights), 224x224, batch {args.batch_size}, "
                 "bf16-mixed, one GPU")  # fmt: skip
    lines.append(f"- command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`".replace(" `", " `"))
    lines.append(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.cuda.get_device_name()}; "
                 f"torch {torch.__version__}; date: {datetime.date.today().isoformat()}")  # fmt: skip
    lines.append(f"- {args.steps} steps, median images/s over steps {args.warmup + 1}-{args.steps}")
    lines.append("")
    lines.append("| images/s (median) | min-max | peak GPU memory (MiB) | wall (s) | final loss |")
    lines.append("|---:|---:|---:|---:|---:|")
    lines.append(f"| {run['images_per_second']:.0f} | {run['min']:.0f}-{run['max']:.0f} | {run['peak_gpu_mib']:.0f} | "
                 f"{run['wall_s']:.0f} | {run['final_loss']:.4f} |")  # fmt: skip
    lines.append("")
    lines.append(flops.stdout[flops.stdout.find("###"):] if flops.returncode == 0 else
                 f"flops_breakdown failed:\n{flops.stderr[-2000:]}")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
