"""Images/s of one process vs two processes under torchrun (gloo, 127.0.0.1) at the same global batch, and
the time of the per-step all-gather of teacher vectors.

    .venv/bin/python benchmarks/distributed_speed.py [--steps 8] [--batch-size 32]

On a machine with C cores, one process uses C compute threads; torchrun gives each of its P processes
C / P threads (OMP_NUM_THREADS), so the comparison is at equal cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import make_images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    return [
        "-m", "kubedistill", "train", f"out={out}", f"data={data}", "model=torchvision/resnet18",
        "method_args.teacher=dinov2/vitb14", "method_args.teacher_weights=none",
        f"transform_args.image_size=[{args.image_size},{args.image_size}]", f"batch_size={args.batch_size}",
        f"max_steps={args.steps}", "epochs=1000", "accelerator=cpu", "log_every_n_steps=1", "overwrite=true",
    ]  # fmt: skip


def images_per_second(out: Path, warmup: int) -> float:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_second"] for r in records[warmup:])


def run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} failed:\n{result.stderr[-3000:]}")


def allgather_child() -> None:
    """Run under torchrun: time all_gather of a (B/P, 768) fp32 block, as the trainer does every step."""
    from kubedistill.training import distributed

    distributed.init(torch.device("cpu"))
    rows = int(os.environ["BENCH_ROWS"])
    block = torch.randn(rows, 768)
    for _ in range(20):
        distributed.all_gather(block)
    distributed.barrier()
    start = time.perf_counter()
    iterations = 200
    for _ in range(iterations):
        distributed.all_gather(block)
    elapsed = (time.perf_counter() - start) / iterations
    if distributed.is_main():
        print(json.dumps({"allgather_ms": elapsed * 1000}))
    distributed.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--allgather-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.allgather_child:
        allgather_child()
        return
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="kubedistill-dist-") as tmp:
        data = Path(tmp) / "images"
        make_images(data, args.batch_size * (args.steps + 1))
        run([sys.executable, *train_args(args, data, Path(tmp) / "one")], env)
        results["1 process"] = images_per_second(Path(tmp) / "one", args.warmup)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                    f"--master-port={_free_port()}"]  # fmt: skip
        run([*torchrun, *train_args(args, data, Path(tmp) / "two")], {**env, "OMP_NUM_THREADS": str(max(1, cores // 2))})
        results["2 processes (torchrun, gloo)"] = images_per_second(Path(tmp) / "two", args.warmup)
    gather = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
         f"--master-port={_free_port()}", __file__, "--allgather-child"],
        env={**env, "BENCH_ROWS": str(args.batch_size // 2), "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    allgather_ms = json.loads(gather.stdout.strip().splitlines()[-1])["allgather_ms"]
    step_s = args.batch_size / results["2 processes (torchrun, gloo)"]
    print(f"\n### 1 vs 2 processes: resnet18 + dinov2/vitb14 (random weights), {args.image_size}x{args.image_size}, "
          f"global batch {args.batch_size}, CPU, precision auto")
    print(f"- command: `python benchmarks/distributed_speed.py {' '.join(sys.argv[1:])}`".replace(" `", " `"))
    print(f"- machine: {platform.machine()}, {cores} cores; torch {torch.__version__}; "
          f"date: {datetime.date.today().isoformat()}")
    print()
    print("| launch | images/s |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.2f} |")
    print(f"\nall-gather of the teacher vectors ({args.batch_size // 2} x 768 fp32 per rank, gloo, 2 ranks): "
          f"{allgather_ms:.3f} ms per step, {allgather_ms / 1000 / step_s:.4%} of a {step_s:.2f} s step")


if __name__ == "__main__":
    main()
