"""The demo's pipeline, step by step, against the same work done by the CLI commands by hand, in one run.

1. ``make demo``'s pipeline under kfp.local (the same arguments): each task's wall time, from kfp.local's log
   (task start to task end: process start, the KFP executor, imports, the step, artifact copies).
2. The same four steps as the commands a user would type (``kubedistill validate``, ``torchrun ... kubedistill
   train``, ``kubedistill probe ... random_baseline=true teacher=...``, ``kubedistill register``), each timed as
   a whole process, logging to the same MLflow server.

The difference per step is what the pipeline layer costs on top of the library (the MLflow parent run, the
context, the KFP executor, copying artifacts). Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python benchmarks/pipeline_overhead.py [--epochs 12]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from common import cpu_name

from kubedistill.devtools.mlflow_server import MlflowServer
from kubedistill.pipeline.local import run_locally
from pipelines.demo import (
    IMAGE_SIZE,
    SMALL_DATA_ARGS,
    TEACHER_EPOCHS,
    TEACHER_WIDTH,
    pipeline_arguments,
    prepare,
)
from pipelines.distillation_pipeline import COMPILED

TASKS = {"validate-dataset": "validate", "distill": "distill", "linear-probe": "probe", "register-model": "register",
         "finalize-run": "finalize (exit handler)"}  # fmt: skip
_STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (?:Executing task '([\w-]+)'|Task '([\w-]+)' finished)")


def task_seconds(log: Path) -> dict[str, float]:
    """Wall time of each task, from kfp.local's "Executing task" / "finished" lines."""
    started, seconds = {}, {}
    for line in log.read_text().splitlines():
        match = _STAMP.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not match:
            continue
        stamp = dt.datetime.strptime(match.group(1)[:15], "%H:%M:%S.%f")
        if match.group(2):
            started[match.group(2)] = stamp
        else:
            seconds[match.group(3)] = (stamp - started[match.group(3)]).total_seconds()
    return seconds


def timed(command: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def by_hand(args, data: Path, teacher: Path, mlflow_uri: str) -> dict[str, float]:
    """The same steps as CLI commands, each a fresh process (as a user or a script would run them)."""
    out = args.out / "by-hand"
    cli = [sys.executable, "-m", "kubedistill"]
    tracking = [f"mlflow.tracking_uri={mlflow_uri}", "mlflow.experiment_name=by-hand"]
    seconds = {"validate": timed([*cli, "validate", f"data={data / 'train'}", f"out={out / 'validate'}", *tracking])}
    train = [
        f"out={out / 'distill'}", f"data={out / 'validate' / 'manifest.jsonl'}", "model=torchvision/resnet18",
        f"method_args.teacher={teacher}", f"epochs={args.epochs}", "batch_size=128",
        f"transform_args.image_size=[{args.image_size},{args.image_size}]", "overwrite=true", *SMALL_DATA_ARGS.split(),
        *tracking,
    ]  # fmt: skip
    seconds["distill"] = timed([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                                "-m", "kubedistill", "train", *train])  # fmt: skip
    seconds["probe"] = timed([
        *cli, "probe", f"checkpoint={out / 'distill' / 'exported' / 'student.pt'}", f"train={data / 'train'}",
        f"val={data / 'test'}", f"out={out / 'probe'}", "random_baseline=true", f"teacher={teacher}", *tracking,
    ])  # fmt: skip
    seconds["register"] = timed([
        *cli, "register", f"model={out / 'distill' / 'exported' / 'student.pt'}",
        f"metrics={out / 'probe' / 'metrics.json'}", "name=by-hand-student", f"tracking_uri={mlflow_uri}",
    ])  # fmt: skip
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/bench-pipeline"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    parser.add_argument("--teacher-width", type=int, default=TEACHER_WIDTH)
    parser.add_argument("--min-top1", type=float, default=0.3)
    args = parser.parse_args()
    args.out = args.out.resolve()
    data, teacher = prepare(args)
    # Warm the page cache with the imports both sides make: the first process after a while pays several
    # seconds more (measured: `kubedistill validate` 12.6 s cold, 6.5 s warm), whichever side runs first.
    subprocess.run([sys.executable, "-c", "import kubedistill.api, kubedistill.pipeline.steps, mlflow.tracking, kfp.dsl"],
                   check=True)  # fmt: skip
    with MlflowServer(args.out / "mlflow") as mlflow_uri:
        started = time.monotonic()
        run = run_locally(COMPILED, pipeline_arguments(args, data, teacher, mlflow_uri), pipeline_root=args.out / "kfp",
                          log_file=args.out / "pipeline.log")  # fmt: skip
        pipeline_total = time.monotonic() - started
        pipeline = task_seconds(args.out / "pipeline.log")
        hand = by_hand(args, data, teacher, mlflow_uri)
    metrics = json.loads((run.step_dir("probe") / "metrics.json").read_text())
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"date: {dt.date.today()}; epochs {args.epochs}, {args.processes} training processes")  # fmt: skip
    print(f"command: .venv/bin/python benchmarks/pipeline_overhead.py --epochs {args.epochs}\n")
    print("| step | pipeline task (s) | same step by hand (s) | pipeline overhead (s) |")
    print("|---|---:|---:|---:|")
    for task, step in TASKS.items():
        mine = pipeline.get(task, float("nan"))
        other = hand.get(step)
        extra = f"{mine - other:+.1f}" if other is not None else "-"
        print(f"| {step} | {mine:.1f} | {other:.1f} | {extra} |" if other is not None else f"| {step} | {mine:.1f} | - | - |")
    overhead = sum(pipeline[t] for t in TASKS) - sum(hand.values())
    print(f"| **all** (pipeline wall {pipeline_total:.0f} s) | {sum(pipeline[t] for t in TASKS):.1f} | "
          f"{sum(hand.values()):.1f} | {overhead:+.1f} |")  # fmt: skip
    print(f"\nprobe: random {metrics['random_linear_top1']:.3f}, distilled {metrics['linear_top1']:.3f}, "
          f"teacher {metrics['teacher_linear_top1']:.3f} (linear top-1)")  # fmt: skip


if __name__ == "__main__":
    main()
