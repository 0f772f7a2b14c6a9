"""torch.compile against eager execution: the teacher's forward and the whole training step, in one run.

dinov2/vitb14 teacher (random weights, the official architecture) and resnet18 student at 224 px, in the
precision the trainer's precision=auto picks on this device (bf16-mixed on CPUs with native bf16, fp32 on
others), set up as the trainer sets them up (pre-cast bf16 teacher weights, channels-last student under bf16,
the same Distillation forward, LARS step and gradient clipping). One fixed random batch: data loading is
left out. Three identical copies (same seed): eager; teacher compiled; teacher and student compiled, each
compiled in place through kubedistill.training.compile (the compile times are the first compile of each part,
cold unless TORCHINDUCTOR_CACHE_DIR holds earlier results). The copies are timed in turn, step by step, so
that a slower moment of a shared machine hits all of them alike; images/s are medians over ``--steps`` calls
after ``--warmup``. The last lines give the break-even point: images per device after which compiling has
paid for itself, or that it never does.

    .venv/bin/python benchmarks/compile_speed.py [--device cpu] [--batch 16] [--steps 10] [--warmup 1]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch
from common import cpu_name

from kubedistill.methods.distillation import Distillation
from kubedistill.methods.distillation.args import DEFAULT_OPTIMIZER, OPTIMIZERS
from kubedistill.models.students import build_student
from kubedistill.models.teachers import load_teacher
from kubedistill.training.allocator import tune_glibc_malloc
from kubedistill.training.compile import compile_student, compile_teacher, example_batch
from kubedistill.training.optim import build_optimizer
from kubedistill.training.precision import cast_frozen_matmul_weights_, configure_matmul, resolve_precision


def interleaved_images_per_second(
    steps: dict[str, Callable[[], None]], batch: int, repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Median images/s of each callable, calling them in turn ``warmup + repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(t) for name, t in times.items()}


class Setup:
    """Teacher, student, method and optimizer as the trainer builds them, and one training step."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        self.plan = resolve_precision("auto", device)
        configure_matmul(device, self.plan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-teacher warning: intended here
            self.teacher = load_teacher(args.teacher, weights="none").to(device)
        if self.plan.teacher_dtype is not None:
            cast_frozen_matmul_weights_(self.teacher, self.plan.teacher_dtype)
        size = (args.image_size, args.image_size)
        student = build_student(args.student, image_size=size)
        self.method = Distillation(
            student=student, student_dim=student.feature_dim, teacher=self.teacher,
            teacher_dim=self.teacher.embed_dim, queue_size=args.queue_size,
        ).to(device)  # fmt: skip
        channels_last = device.type == "cuda" or self.plan.student_bf16
        if channels_last:
            self.method.student.to(memory_format=torch.channels_last)
        self.method.train()
        self.optimizer = build_optimizer([self.method.student, self.method.head], OPTIMIZERS[DEFAULT_OPTIMIZER](), 0.1)
        self.example = example_batch(args.batch, size, device, channels_last=channels_last)
        generator = torch.Generator(device="cpu").manual_seed(0)
        self.images = torch.randn(self.example.shape, generator=generator).to(device)
        self.images = self.images.contiguous(memory_format=torch.channels_last) if channels_last else self.images
        self.mixup = torch.Generator().manual_seed(0)

    def teacher_forward(self) -> None:
        with torch.no_grad(), self.plan.teacher_autocast(self.device):
            self.teacher(self.images)

    def train_step(self) -> None:
        loss = self.method(
            self.images,
            generator=self.mixup,
            teacher_autocast=self.plan.teacher_autocast(self.device),
            student_autocast=self.plan.student_autocast(self.device),
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.method.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teacher", default="dinov2/vitb14")
    parser.add_argument("--student", default="torchvision/resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16, help="per-device batch of the teacher and the step")
    parser.add_argument("--queue-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        tune_glibc_malloc()  # as the trainer does
    start = time.perf_counter()
    eager, teacher_only, both = (Setup(args, device) for _ in range(3))
    teacher_result = compile_teacher(teacher_only.teacher, teacher_only.example,
                                     autocast=teacher_only.plan.teacher_autocast(device))  # fmt: skip
    compile_teacher(both.teacher, both.example, autocast=both.plan.teacher_autocast(device))  # cached: untimed
    student_result = compile_student(both.method.student, both.example,
                                     autocast=both.plan.student_autocast(device))  # fmt: skip
    for part, result in (("teacher", teacher_result), ("student", student_result)):
        if not result.compiled:
            sys.exit(f"the {part} did not compile: {result.error}")
    measure = partial(interleaved_images_per_second, batch=args.batch, repeats=args.steps, warmup=args.warmup,
                      device=device)  # fmt: skip
    forward = measure({"eager": eager.teacher_forward, "compiled": teacher_only.teacher_forward})
    step = measure({"eager": eager.train_step, "teacher": teacher_only.train_step, "both": both.train_step})
    wall = time.perf_counter() - start

    print("### torch.compile vs eager: teacher forward and training step (images/s)")
    print("- command: `.venv/bin/python benchmarks/compile_speed.py " + " ".join(sys.argv[1:]) + "`")
    machine = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {machine}; torch {torch.__version__}")
    print(f"- date: {datetime.date.today().isoformat()}; precision {eager.plan.name} (what precision=auto picks "
          f"here); {args.teacher} (random weights) + {args.student}, {args.image_size} px, batch {args.batch}; "
          f"median of {args.steps} interleaved calls after {args.warmup} warm-up; whole run {wall:.0f} s")  # fmt: skip
    print()
    print("| measured | eager | compiled | speedup | compile time (s) |")
    print("|---|---:|---:|---:|---:|")
    rows = [
        ("teacher forward (no_grad)", forward["eager"], forward["compiled"], f"{teacher_result.seconds:.0f} (teacher)"),
        ("training step, teacher compiled", step["eager"], step["teacher"], "-"),
        ("training step, teacher + student compiled", step["eager"], step["both"],
         f"{student_result.seconds:.0f} (student fwd+bwd)"),
    ]  # fmt: skip
    for name, eager_ips, compiled_ips, seconds in rows:
        print(f"| {name} | {eager_ips:.2f} | {compiled_ips:.2f} | {compiled_ips / eager_ips:.2f}x | {seconds} |")
    print()
    for name, compiled_ips, seconds in (
        ("teacher compiled", step["teacher"], teacher_result.seconds),
        ("both compiled", step["both"], teacher_result.seconds + student_result.seconds),
    ):
        saved = 1 / step["eager"] - 1 / compiled_ips  # seconds per image
        if saved > 0:
            print(f"- {name}: saves {saved * step['eager']:.1%} of the eager step time ({1e3 * saved:.1f} ms/image); "
                  f"{seconds:.0f} s of compile time repaid after {seconds / saved:,.0f} images per device")  # fmt: skip
        else:
            print(f"- {name}: the step takes {-saved * step['eager']:.1%} longer than eager: {seconds:.0f} s of "
                  "compile time never repaid")  # fmt: skip


if __name__ == "__main__":
    main()
