"""kubedistill vs LightlyTrain's ``distillationv1``: training images/s and peak memory, side by side in one run.

Both tools get the same files and settings: resnet18 student, dinov2/vitb14 teacher without registers (random
weights in the official checkpoint format, one file shared by both; speed does not depend on the weights),
224x224, global batch 32, the same number of DataLoader workers, CPU, generated 320x320
JPEGs (``--dataset-steps`` steps' worth; each run trains ``--steps`` steps of its first epoch). Each variant runs in a fresh process (its own peak RSS); variants are interleaved over ``--repeats``
rounds because this VM's speed drifts between processes.

Per-step timings: kubedistill's ``metrics.jsonl`` (log_every_n_steps=1: images/s over each step, data included);
LightlyTrain's ``metrics.jsonl`` (``trainer_args={"log_every_n_steps": 1}``: ``profiling/batch_time`` +
``profiling/data_time`` per step). Images/s is the median over the steps after ``--warmup``.

LightlyTrain runs from its own venv (``make bench-speed`` creates benchmarks/.venv-lightly). It downloads the
official teacher before it reads ``teacher_weights``: the random file is therefore also placed where its cache
looks (``$LIGHTLY_TRAIN_CACHE_DIR/models/dinov2_vitb14_pretrain.pth``), and its telemetry is off
(``LIGHTLY_TRAIN_EVENTS_DISABLED=1``); nothing is fetched from the network.

    .venv/bin/python benchmarks/speed_vs_lightly.py [--steps 30] [--warmup 5] [--repeats 1] [--num-workers 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name, default_variants

HERE = Path(__file__).resolve().parent
LIGHTLY_PYTHON = HERE / ".venv-lightly" / "bin" / "python"
TEACHER_FILE = "dinov2_vitb14_pretrain.pth"

# name: (tool, precision, DataLoader workers: None = --num-workers, the same for both tools)
VARIANTS = {
    "kubedistill (precision auto)": ("kubedistill", "auto", None),
    "kubedistill (all defaults: num_workers auto)": ("kubedistill", "auto", "auto"),
    "LightlyTrain distillationv1 (default precision)": ("lightly", "auto", None),
    "LightlyTrain distillationv1 (bf16-mixed)": ("lightly", "bf16-mixed", None),
}


# ------------------------------------------------------------------------------------------- child processes


def child_kubedistill(args: argparse.Namespace) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    import kubedistill

    kubedistill.train(
        out=args.out,
        data=args.data,
        model="torchvision/resnet18",
        method="distillation",
        method_args={"teacher": "dinov2/vitb14", "teacher_weights": args.teacher},
        batch_size=args.batch_size,
        max_steps=args.steps,
        epochs=1,
        precision=args.precision,
        num_workers=args.num_workers if args.num_workers == "auto" else int(args.num_workers),
        accelerator="cpu",
        log_every_n_steps=1,
        overwrite=True,
    )
    records = _read_jsonl(Path(args.out) / "metrics.jsonl")
    return {"per_step_images_per_second": [r["images_per_second"] for r in records]}


def child_lightly(args: argparse.Namespace) -> dict:
    import lightly_train

    lightly_train.pretrain(
        out=args.out,
        data=args.data,
        model="torchvision/resnet18",
        method="distillationv1",
        method_args={"teacher": "dinov2/vitb14-noreg", "teacher_weights": args.teacher},
        batch_size=args.batch_size,
        epochs=1,
        precision=args.precision,
        num_workers=args.num_workers if args.num_workers == "auto" else int(args.num_workers),
        accelerator="cpu",
        devices=1,
        overwrite=True,
        trainer_args={"log_every_n_steps": 1, "max_steps": args.steps},
    )
    records = [r for r in _read_jsonl(Path(args.out) / "metrics.jsonl") if "profiling/batch_time" in r]
    per_step = [
        args.batch_size / (r["profiling/batch_time"] + r.get("profiling/data_time", 0.0)) for r in records
    ]
    return {"per_step_images_per_second": per_step, "steps_logged": len(records)}


def run_child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    result = child_kubedistill(args) if args.child == "kubedistill" else child_lightly(args)
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_worker_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- parent


def make_teacher_file(path: Path) -> None:
    """Random dinov2/vitb14 weights in the official state_dict format (seeded), for both tools."""
    import torch

    from kubedistill.models.teachers import TEACHERS
    from kubedistill.models.vit import DinoV2ViT

    torch.manual_seed(0)
    state = DinoV2ViT(TEACHERS["dinov2/vitb14"].vit).init_random_().state_dict()
    # The official file carries the iBOT mask token; LightlyTrain loads strictly and expects it.
    state.setdefault("mask_token", torch.zeros(1, state["cls_token"].shape[-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def run_variant(name: str, args: argparse.Namespace, data: Path, teacher: Path, out: Path, cache: Path) -> dict:
    tool, precision, workers = VARIANTS[name]
    python = sys.executable if tool == "kubedistill" else str(LIGHTLY_PYTHON)
    command = [
        python, __file__, "--child", tool, "--data", str(data), "--out", str(out), "--teacher", str(teacher),
        "--precision", precision, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--num-workers", str(args.num_workers if workers is None else workers),
    ]  # fmt: skip
    env = {**os.environ, "LIGHTLY_TRAIN_CACHE_DIR": str(cache), "LIGHTLY_TRAIN_EVENTS_DISABLED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"variant {name!r} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    run = json.loads(lines[-1].removeprefix("RESULT "))
    measured = run["per_step_images_per_second"][args.warmup :]
    if not measured:
        raise SystemExit(f"variant {name!r}: no step after the {args.warmup} warm-up steps was logged")
    run["images_per_second"] = statistics.median(measured)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["kubedistill", "lightly"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--dataset-steps", type=int, default=200,
                        help="the data set holds this many steps' worth of images (runs stop after --steps)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of images/s")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", default="1", help="DataLoader workers, the same for both tools")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all variants")
    parser.add_argument("--workdir", type=Path, default=None, help="keep images and runs here (default: a temp dir)")
    parser.add_argument("--variants", default=None, help="';'-separated, from: " + "; ".join(VARIANTS) +
                        " (default: all; the explicit bf16 one only on a CPU with native bf16)")  # fmt: skip
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if not LIGHTLY_PYTHON.exists():
        raise SystemExit(f"{LIGHTLY_PYTHON} is missing: run `make bench-speed`, which creates it")
    names = [v.strip() for v in args.variants.split(";")] if args.variants else default_variants(VARIANTS, lambda v: v[1])
    sys.path.insert(0, str(HERE))
    from train_speed import make_images  # the generated JPEGs of the training benchmark

    with tempfile.TemporaryDirectory(prefix="kubedistill-vs-lightly-") as tmp:
        root = args.workdir or Path(tmp)
        make_images(root / "images", args.batch_size * max(args.steps, args.dataset_steps))
        teacher = root / "cache" / "models" / TEACHER_FILE
        make_teacher_file(teacher)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names:
                out = root / f"round{repeat}-variant{names.index(name)}-{VARIANTS[name][0]}"
                runs[name].append(run_variant(name, args, root / "images", teacher, out, root / "cache"))
                r = runs[name][-1]
                print(f"{name} (round {repeat + 1}): {r['images_per_second']:.2f} img/s, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB, wall {r['wall_s']:.0f} s", flush=True)
    print_table(args, runs)


def print_table(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    command = "make bench-speed" if len(sys.argv) == 1 else "python benchmarks/speed_vs_lightly.py " + shlex.join(sys.argv[1:])
    summary = {
        name: {
            "images_per_second": statistics.median(r["images_per_second"] for r in rs),
            "per_run": [r["images_per_second"] for r in rs],
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs),
            "peak_worker_rss_mib": statistics.median(r["peak_worker_rss_mib"] for r in rs),
        }
        for name, rs in runs.items()
    }
    lightly = {n: s for n, s in summary.items() if VARIANTS[n][0] == "lightly"}
    print(f"\n### kubedistill vs LightlyTrain distillationv1: resnet18 + dinov2/vitb14 (random weights), 224x224, "
          f"global batch {args.batch_size}, {args.num_workers} DataLoader worker(s) each unless named, CPU")
    print(f"- command: `{command}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; torch {_version('torch')}; "
          f"lightly-train {_lightly_version()}")
    print(f"- date: {datetime.date.today().isoformat()}; {args.steps} steps per run on "
          f"{args.batch_size * max(args.steps, args.dataset_steps)} images, median images/s over steps {args.warmup + 1}-{args.steps}; {args.repeats} "
          "interleaved round(s), median of rounds")
    print()
    header = "| tool (precision) | images/s | per round | peak RSS main (MiB) | peak RSS workers (MiB) |"
    header += "".join(f" vs {n.removeprefix('LightlyTrain distillationv1 ')} |" for n in lightly)
    print(header)
    print("|---|---:|---:|---:|---:|" + "---:|" * len(lightly))
    for name, s in summary.items():
        ratios = "".join(f" {s['images_per_second'] / ls['images_per_second']:.2f}x |" for ls in lightly.values())
        per_run = ", ".join(f"{v:.2f}" for v in s["per_run"])
        print(f"| {name} | {s['images_per_second']:.2f} | {per_run} | {s['peak_rss_mib']:.0f} | "
              f"{s['peak_worker_rss_mib']:.0f} |{ratios}")
    if not lightly:
        return
    fastest = max(ls["images_per_second"] for ls in lightly.values())
    print()
    for name, s in summary.items():
        if VARIANTS[name][0] == "kubedistill":
            ratio = s["images_per_second"] / fastest
            print(f"- {name} vs LightlyTrain's fastest setting: {ratio:.2f}x (target >= 1.30x: "
                  f"{'met' if ratio >= 1.3 else 'NOT met'})")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _lightly_version() -> str:
    code = "from importlib.metadata import version; print(version('lightly-train'))"
    result = subprocess.run([str(LIGHTLY_PYTHON), "-c", code], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
