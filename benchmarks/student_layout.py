"""Student forward + backward time by memory layout and precision: why the trainer uses channels-last under bf16.

resnet18 (random init), one forward + backward of a batch, fp32 or bf16 autocast, NCHW (contiguous) or NHWC
(channels-last) at several image sizes; best of 3 after a warm-up, 2 threads.

    .venv/bin/python benchmarks/student_layout.py [--sizes 32,64,224] [--batch 128,128,32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch
from common import cpu_name

from kubedistill.models.students import build_student


def forward_backward_ms(size: int, batch: int, channels_last: bool, bf16: bool, repeats: int = 3) -> float:
    torch.manual_seed(0)
    student = build_student("torchvision/resnet18", image_size=(size, size))
    images = torch.randn(batch, 3, size, size)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = student(images)
        features.float().sum().backward()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="32,64,224")
    parser.add_argument("--batch", default="128,128,32", help="batch size per image size")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    print("### resnet18 forward + backward (ms) by layout and precision")
    print("- command: `.venv/bin/python benchmarks/student_layout.py " + f"--sizes {args.sizes} --batch {args.batch}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}")
    print(f"- date: {datetime.date.today().isoformat()}; best of 3 after a warm-up")
    print()
    print("| image size | batch | fp32 NCHW | fp32 channels-last | bf16 NCHW | bf16 channels-last |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, batch in zip(sizes, batches, strict=True):
        cells = [forward_backward_ms(size, batch, cl, bf16) for bf16 in (False, True) for cl in (False, True)]
        print(f"| {size} | {batch} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
