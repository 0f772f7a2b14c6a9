"""A fixed-step side run of the quality benchmark, for exploring settings quickly (no time budget).

    .venv/bin/python benchmarks/quality/side_run.py NAME STEPS '{"key": value, ...}' [--teacher PATH]

Trains the student for STEPS steps with the given `kubedistill train` overrides on the benchmark's cached
renders and teacher (run benchmark.py once first), probes it, and appends one line to
out/bench-quality/side_runs.txt. The exploration behind benchmark.py's SMALL_DATA setting was done this way.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("overrides", type=json.loads, help="JSON object of kubedistill train overrides")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-quality"))
    parser.add_argument("--teacher", type=Path, default=None, help="default: WORKDIR/teacher.pt")
    args = parser.parse_args()
    data = args.workdir / "data"
    teacher = args.teacher or args.workdir / "teacher.pt"
    out = args.workdir / "side_runs" / args.name
    num_train = sum(1 for _ in (data / "train").glob("*/*.png"))
    batch = int(args.overrides.get("batch_size", benchmark.BATCH_SIZE))
    epochs = math.ceil(args.steps / (num_train // batch))
    command = benchmark.train_command(out, data, teacher, args.overrides, epochs=epochs, max_steps=args.steps, seed=0)
    wall = benchmark.run_train(command)
    metrics = benchmark.probe_student(out / "exported" / "student.pt", data, out / "probe")
    records = benchmark._read_jsonl(out / "metrics.jsonl")
    loss = statistics.mean(r["loss"] for r in records[-20:])
    images_per_second = statistics.median(r["images_per_second"] for r in records)
    line = (f"{time.strftime('%Y-%m-%d')} {args.name}: {args.steps} steps, {wall:.0f} s, {images_per_second:.0f} "
            f"img/s, loss (last 20) {loss:.3f}, linear top-1 {metrics['linear_top1']:.3f}, kNN top-1 "
            f"{metrics['knn_top1']:.3f}; {json.dumps(args.overrides)}")  # fmt: skip
    print(line)
    with open(args.workdir / "side_runs.txt", "a") as log:
        log.write(line + "\n")


if __name__ == "__main__":
    main()
