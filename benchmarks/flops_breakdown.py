"""Where a training step's time goes, and how far it is from this machine's matmul peak.

1. Peak: the best of several large square matmuls (``--matmul-size``), fp32 and bf16, in GFLOP/s.
2. Phases of one step, measured in this process on the same batch, in the precision `precision=auto` picks
   (bf16 autocast on CPUs with native bf16 and on CUDA): data (decode + augment ``batch`` generated JPEGs and
   stack them, what the DataLoader does), teacher forward, student forward + head + loss + backward, optimizer
   step (gradient clip + LARS). FLOPs of the teacher and the student are counted with
   torch.utils.flop_counter (matmuls and convolutions: nearly all of the arithmetic).
3. The product's real step: a short `kubedistill.train` run in a child process (median images/s over its
   steps after the first two); "other" is that step minus the sum of the phases.

    .venv/bin/python benchmarks/flops_breakdown.py [--batch-size 32] [--image-size 224] [--device cpu]
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

import torch
from common import cpu_name

HERE = Path(__file__).resolve().parent


def matmul_peak(dtype: torch.dtype, size: int, device: torch.device, repeats: int = 5) -> float:
    """Best GFLOP/s of (size x size) @ (size x size) in ``dtype``."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after two warm-up calls (kernel selection, caches)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure_phases(args: argparse.Namespace, files: list[str], device: torch.device) -> dict[str, dict]:
    from kubedistill.data.datasets import ImageDataset
    from kubedistill.data.transforms import DistillationTransform, DistillationTransformArgs
    from kubedistill.methods.distillation import Distillation, auto_queue_size
    from kubedistill.methods.distillation.args import LARSArgs
    from kubedistill.models.students import build_student
    from kubedistill.models.teachers import load_teacher
    from kubedistill.training.optim import build_optimizer
    from kubedistill.training.precision import cast_frozen_matmul_weights_, resolve_precision

    plan = resolve_precision("auto", device)
    size = (args.image_size, args.image_size)
    dataset = ImageDataset(files, DistillationTransform(DistillationTransformArgs(image_size=size)))
    teacher = load_teacher(args.teacher, weights="none").to(device)
    if plan.teacher_bf16:  # as the trainer does
        cast_frozen_matmul_weights_(teacher)
    student = build_student(args.model, image_size=size)
    method = Distillation(student=student, student_dim=student.feature_dim, teacher=teacher,
                          teacher_dim=teacher.embed_dim, queue_size=auto_queue_size(len(files))).to(device)  # fmt: skip
    method.train()
    optimizer = build_optimizer([method.student, method.head], LARSArgs(), 0.1)
    images = torch.stack([dataset[i]["image"] for i in range(args.batch_size)]).to(device)
    if device.type == "cuda" or plan.student_bf16:  # as the trainer does
        method.student.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with plan.teacher_autocast(device):
        teacher_vectors = method.teacher_embed(images)
    method.queue.enqueue(teacher_vectors)

    def data() -> None:
        torch.stack([dataset[i]["image"] for i in range(args.batch_size)])

    def teacher_forward() -> None:
        with plan.teacher_autocast(device):
            method.teacher_embed(images)

    def student_step() -> None:
        from kubedistill.methods.distillation.loss import distillation_loss

        with plan.student_autocast(device):
            vectors = method.student_embed(images)
        loss = distillation_loss(vectors, teacher_vectors, method.queue.vectors, temperature=0.07,
                                 queue_mask=method.queue.mask)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def optimizer_step() -> None:
        torch.nn.utils.clip_grad_norm_([p for p in method.parameters() if p.requires_grad], 1.0)
        optimizer.step()

    phases = {"data (decode + augment)": (data, 0), "teacher forward": (teacher_forward, None),
              "student forward + backward": (student_step, None), "optimizer step": (optimizer_step, 0)}  # fmt: skip
    result = {}
    for name, (fn, flops) in phases.items():
        seconds = timed(fn, device, args.repeats)
        count = counted_flops(fn) if flops is None else flops
        result[name] = {"seconds": seconds, "flops": count}
        print(f"{name}: {seconds:.3f} s, {count / 1e9:.1f} GFLOP", flush=True)
    result["_precision"] = plan.name  # type: ignore[assignment]
    return result


def product_step_seconds(args: argparse.Namespace, data: Path, out: Path) -> float:
    """Median seconds per step of a short `kubedistill.train` run at the same settings (child process)."""
    code = (
        "import warnings; warnings.simplefilter('ignore'); import kubedistill; "
        f"kubedistill.train(out={str(out)!r}, data={str(data)!r}, model={args.model!r}, "
        f"method_args={{'teacher': {args.teacher!r}, 'teacher_weights': 'none'}}, "
        f"transform_args={{'image_size': [{args.image_size}, {args.image_size}]}}, batch_size={args.batch_size}, "
        f"max_steps={args.product_steps}, epochs=1000, accelerator={args.device!r}, log_every_n_steps=1, "
        "overwrite=True)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"kubedistill.train failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(args.batch_size / r["images_per_second"] for r in records[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--model", default="torchvision/resnet18")
    parser.add_argument("--teacher", default="dinov2/vitb14")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per phase (median)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--product-steps", type=int, default=8, help="steps of the real training run; 0 skips it")
    args = parser.parse_args()
    device = torch.device(args.device)
    sys.path.insert(0, str(HERE))
    from train_speed import make_images

    peaks = {name: matmul_peak(dtype, args.matmul_size, device) for name, dtype in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}  # fmt: skip
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory(prefix="kubedistill-flops-") as tmp:
        data = Path(tmp) / "images"
        make_images(data, max(args.batch_size * (args.product_steps + 1), 64))
        files = sorted(str(p) for p in data.glob("*.jpg"))
        phases = measure_phases(args, files, device)
        product = product_step_seconds(args, data, Path(tmp) / "run") if args.product_steps else None
    print_table(args, peaks, phases, product)


def print_table(args: argparse.Namespace, peaks: dict, phases: dict, product: float | None) -> None:
    precision = phases.pop("_precision")
    peak = peaks["bf16"] if "bf16" in precision else peaks["fp32"]
    total_s = sum(p["seconds"] for p in phases.values())
    total_flops = sum(p["flops"] for p in phases.values())
    command = "python benchmarks/flops_breakdown.py " + " ".join(sys.argv[1:])
    print(f"\n### Where a training step goes: {args.model} + {args.teacher} (random weights), {args.image_size}x"
          f"{args.image_size}, batch {args.batch_size}, {args.device}, precision auto = {precision}")
    print(f"- command: `{command.strip()}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {_device_name(args.device)}; "
          f"torch {torch.__version__}; date: {datetime.date.today().isoformat()}")
    print(f"- measured matmul peak ({args.matmul_size}x{args.matmul_size}): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s; the ratios below use the {'bf16' if 'bf16' in precision else 'fp32'} "
          "peak")
    print()
    print("| phase | s per step | share | GFLOP per step | achieved GFLOP/s | of peak |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = dict(phases)
    if product is not None and product > total_s:
        rows["other (loader hand-off, mixup, queue, logging)"] = {"seconds": product - total_s, "flops": 0}
    step_s = product if product is not None else total_s
    for name, p in rows.items():
        rate = p["flops"] / p["seconds"] / 1e9 if p["flops"] else 0.0
        print(f"| {name} | {p['seconds']:.3f} | {100 * p['seconds'] / step_s:.0f}% | {p['flops'] / 1e9:.1f} | "
              f"{rate:.0f} | {100 * rate / peak:.0f}% |" if p["flops"] else
              f"| {name} | {p['seconds']:.3f} | {100 * p['seconds'] / step_s:.0f}% | - | - | - |")  # fmt: skip
    rate = total_flops / step_s / 1e9
    label = "whole step (kubedistill.train, median)" if product is not None else "sum of the phases"
    print(f"| **{label}** | {step_s:.3f} | 100% | {total_flops / 1e9:.1f} | {rate:.0f} | {100 * rate / peak:.0f}% |")
    print(f"\n{args.batch_size / step_s:.2f} images/s; {total_flops / args.batch_size / 1e9:.1f} GFLOP per image")


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_name()


if __name__ == "__main__":
    main()
