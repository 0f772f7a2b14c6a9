"""bf16 against fp32 on this CPU as it is, and capped at AVX2 (as on a CPU without AVX-512 or native bf16).

Each configuration runs in a fresh process (oneDNN and ATen read their caps at start-up):
- what the library decides there (``cpu_has_fast_bf16``, ``precision=auto``);
- a 1024x1024 matmul in fp32 and bf16 (GFLOP/s, best of 10);
- one training step of the demo's known teacher (TeacherNet, width 16 and 32, batch 128 at 32 px, AdamW), in fp32
  and under bf16 autocast (channels-last, as ``train_teacher`` runs it with native bf16), median of 5 after one
  warm-up.

    .venv/bin/python benchmarks/cpu_precision.py
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name

CAPS = {"as it is": {}, "capped at AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def child() -> dict:
    import torch
    from torch import nn

    from kubedistill.devtools.known_teacher import TeacherNet, augment_batch
    from kubedistill.training.precision import cpu_has_fast_bf16, resolve_precision

    result = {"native_bf16": cpu_has_fast_bf16(), "auto": resolve_precision("auto", torch.device("cpu")).name}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 1024).to(dtype)
        a @ a
        best = min(_seconds(lambda a=a: a @ a) for _ in range(10))
        result[f"matmul {str(dtype).removeprefix('torch.')} GFLOP/s"] = 2 * 1024**3 / best / 1e9
    torch.manual_seed(0)
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    for width in (16, 32):
        for bf16 in (False, True):
            net, head = TeacherNet(width, input_size=32), nn.Linear(128, 10)
            layout = torch.channels_last if bf16 else torch.contiguous_format
            net.to(memory_format=layout)
            optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-3)

            def step(net=net, head=head, optimizer=optimizer, layout=layout, bf16=bf16) -> None:
                x = augment_batch(images, 32).contiguous(memory_format=layout)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = head(net(x)).float().logsumexp(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            step()
            result[f"teacher step w{width} {'bf16' if bf16 else 'fp32'} s"] = statistics.median(
                _seconds(step) for _ in range(5))  # fmt: skip
    return result


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    if "--child" in sys.argv:
        print("RESULT " + json.dumps(child()))
        return
    results = {}
    for name, env in CAPS.items():
        done = subprocess.run([sys.executable, __file__, "--child"], capture_output=True, text=True, check=True,
                              env={**os.environ, **env})  # fmt: skip
        results[name] = json.loads(done.stdout.split("RESULT ", 1)[1])
    import torch

    print("### bf16 and fp32 on this CPU, as it is and capped at AVX2 (`benchmarks/cpu_precision.py`)")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {cpu_name()}; torch {torch.__version__}; "
          f"date: {datetime.date.today().isoformat()}")  # fmt: skip
    print("- command: `.venv/bin/python benchmarks/cpu_precision.py`\n")
    keys = list(next(iter(results.values())))
    print("| | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in keys:
        print(f"| {key} | " + " | ".join(_cell(r[key]) for r in results.values()) + " |")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    return str(value)


if __name__ == "__main__":
    main()
