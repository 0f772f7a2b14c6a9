"""Offline quality benchmark ("known teacher"): does label-free distillation transfer what a teacher knows?

1. Render scikit-learn's digits as a harder image set (kubedistill.devtools.digits): random scale, position, colour and
   background texture, several renders per digit, a fixed stratified train/test split on the source digits.
2. Train a teacher WITH labels on the train renders (kubedistill.devtools.known_teacher) and save it as TorchScript.
3. Distill `torchvision/resnet18` (random init) from that teacher WITHOUT labels on the train renders, with
   `kubedistill train` (method_args.teacher = the TorchScript file), one run per (setting, time budget).
4. Score three feature extractors with the product's probe (linear probe + kNN, fitted on the labeled train
   renders, scored on the test renders): the random-init student and each distilled student through
   `kubedistill.probe` on their exported files (the random-init student at each image size a run used), the
   teacher through the same feature extraction and evaluate_features at its own size (32). Gap closed =
   (distilled - random at the run's image size) / (teacher - random), linear top-1.

Time budgets: a short calibration run of each setting measures its seconds per step and fixed start-up cost;
a budget of M minutes then becomes max_steps = (M x 60 - start-up) / (seconds per step), with epochs =
ceil(max_steps / steps per epoch). The trainer's schedule (warm-up, cosine decay) is computed from those
steps, so it ends at the budget instead of being cut off mid-way. The wall time each run really took is in
the table; on a busy machine it overshoots.

"defaults" is every method default except the image size, which is the renders' size (32; the default 224
would upsample each image 7x and cost ~50x the compute). The teacher resizes any other input to 32, so a
student may train at 64 while the teacher sees what it was trained on. Suites:
    main       the random student, the teacher and HEADLINE at 10 minutes (`make bench-quality`)
    budgets    defaults and HEADLINE at 5, 10 and 15 minutes
    ablations  at 5 minutes, one change each to HEADLINE: mixup on, LARS, temperatures, queue sizes
    all        budgets + ablations
    steps      side runs: defaults and the GRID settings for a fixed number of steps (--steps), wall time free
    report     no training: the table and plot of every budgets/ablations run already in the cache

    .venv/bin/python benchmarks/quality/benchmark.py [--suite main] [--workdir out/bench-quality]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # benchmarks/common.py

import plot  # noqa: E402
from common import cpu_name  # noqa: E402

from kubedistill.devtools import digits, known_teacher  # noqa: E402

STUDENT = "torchvision/resnet18"
IMAGE_SIZE = 32
BATCH_SIZE = 128  # the method's default global batch

# Settings are `kubedistill train` key=value overrides on top of the method's defaults.
DEFAULTS: dict[str, object] = {}
# The best setting found for this small dataset (5,388 images of 32x32), from the fixed-step side runs in
# BENCHMARKS.md: image size 64 (resnet18's stride-4 stem leaves a 32 px image 8x8 after its first layers),
# AdamW at an unscaled 1e-3 (the default LARS and sqrt-scaled lr barely move in a few hundred steps), no mixup,
# and milder views (crops of at least half the image, no colour jitter, grayscale or flip): on 32 px digits the
# default views often lose the digit, and the teacher's pseudo-labels on them are noise.
SMALL_DATA: dict[str, object] = {
    "transform_args.image_size": [64, 64],
    "optim": "adamw",
    "optim_args.lr": 1e-3,
    "method_args.lr_scale_method": "none",
    "method_args.mixup": False,
    "transform_args.random_resize.min_scale": 0.5,
    "transform_args.color_jitter.prob": 0.0,
    "transform_args.random_gray_scale": 0.0,
    "transform_args.random_flip.horizontal_prob": 0.0,
}
_DEFAULT_OPTIMIZER = ("optim", "optim_args.lr", "method_args.lr_scale_method")
# Settings of the fixed-step side runs (`--steps N`) that led to SMALL_DATA.
GRID: dict[str, dict[str, object]] = {
    "image 64": {"transform_args.image_size": [64, 64]},
    "image 64, AdamW, mixup off": {"transform_args.image_size": [64, 64], "optim": "adamw", "optim_args.lr": 1e-3,
                                   "method_args.mixup": False},  # fmt: skip
    "image 64, AdamW lr 3e-3, mixup off": {"transform_args.image_size": [64, 64], "optim": "adamw",
                                           "optim_args.lr": 3e-3, "method_args.mixup": False},  # fmt: skip
    "small-data": SMALL_DATA,
}
# Ablations, each one change to HEADLINE, at the shortest budget.
ABLATIONS: dict[str, dict[str, object]] = {
    "small-data, mixup on": {**SMALL_DATA, "method_args.mixup": True},
    "small-data, LARS (default lr and scaling)": {k: v for k, v in SMALL_DATA.items() if k not in _DEFAULT_OPTIMIZER},
    "small-data, temperature 0.04": {**SMALL_DATA, "method_args.temperature": 0.04},
    "small-data, temperature 0.2": {**SMALL_DATA, "method_args.temperature": 0.2},
    "small-data, queue 4096": {**SMALL_DATA, "method_args.queue_size": 4096},
}
# Not in the default list (run it with --ablation-extra): a queue smaller than auto's 1024.
EXTRA_ABLATIONS: dict[str, dict[str, object]] = {"small-data, queue 256": {**SMALL_DATA, "method_args.queue_size": 256}}
# The setting `make bench-quality` runs at 10 minutes.
HEADLINE = "small-data"
CALIBRATION_STEPS = 20


def settings_for(name: str) -> dict[str, object]:
    if name == "defaults":
        return DEFAULTS
    return GRID.get(name) or ABLATIONS.get(name) or EXTRA_ABLATIONS[name]


def tag_of(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)


# ------------------------------------------------------------------------------------------- data and teacher


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    data = args.workdir / "data"
    counts = digits.render_dataset(
        data, renders_train=args.renders_train, renders_test=args.renders_test, size=IMAGE_SIZE, seed=args.seed
    )
    print(f"renders: {counts['train']} train, {counts['test']} test ({IMAGE_SIZE}x{IMAGE_SIZE}) in {data}", flush=True)
    teacher_path = args.workdir / "teacher.pt"
    info = known_teacher.cached_teacher(
        data, teacher_path, image_size=IMAGE_SIZE, epochs=args.teacher_epochs, width=args.teacher_width, seed=args.seed,
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(f"teacher: own classifier {info['test_accuracy']:.3f} on test, trained in {info['train_seconds']:.0f} s",
          flush=True)  # fmt: skip
    return data, teacher_path, info


# ------------------------------------------------------------------------------------------- probes


def probe_student(exported: Path, data: Path, out: Path) -> dict:
    """``kubedistill.probe`` on an exported student: linear + kNN on the labeled renders."""
    import kubedistill

    return dict(kubedistill.probe(checkpoint=exported, train=data / "train", val=data / "test", out=out).metrics)


def probe_teacher(teacher_path: Path, data: Path, image_size: int) -> dict:
    """The teacher through the same feature extraction and probes as `kubedistill probe` uses."""
    from kubedistill.evaluation.features import extract_features
    from kubedistill.evaluation.probe import evaluate_features
    from kubedistill.evaluation.run import load_labeled

    model = torch.jit.load(str(teacher_path), map_location="cpu").eval()
    train_uris, train_labels = load_labeled(str(data / "train"))
    val_uris, val_labels = load_labeled(str(data / "test"))
    extract = {"image_size": image_size, "normalize": True, "batch_size": 64, "num_workers": 0, "device": "cpu"}
    return evaluate_features(
        extract_features(model, train_uris, **extract), train_labels,
        extract_features(model, val_uris, **extract), val_labels,
    )  # fmt: skip


def export_random_student(path: Path, image_size: int, seed: int) -> Path:
    """A random-init student (the distillation's starting point, same seed) as an exported student file."""
    from kubedistill.data.transforms import NormalizeArgs
    from kubedistill.models.export import StudentMetadata, export_student
    from kubedistill.models.students import build_student

    torch.manual_seed(seed)
    student = build_student(STUDENT, image_size=(image_size, image_size))
    norm = NormalizeArgs()
    metadata = StudentMetadata(STUDENT, student.feature_dim, (image_size, image_size), norm.mean, norm.std)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_student(student, metadata, path)
    return path


def cached(path: Path, compute) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------- distillation


def train_command(out: Path, data: Path, teacher: Path, settings: dict, *, epochs: int, max_steps: int,
                  seed: int, num_workers: str = "auto") -> list[str]:  # fmt: skip
    values = {
        "out": out, "data": data / "train", "model": STUDENT, "method": "distillation",
        "method_args.teacher": teacher, "transform_args.image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "batch_size": BATCH_SIZE, "epochs": epochs, "max_steps": max_steps, "seed": seed, "accelerator": "cpu",
        "log_every_n_steps": 1, "overwrite": "true", "num_workers": num_workers, **settings,
    }  # fmt: skip
    tokens = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in values.items()]
    return [sys.executable, "-m", "kubedistill", "train", *[t.replace(" ", "") for t in tokens]]


def run_train(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"training failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def image_size_of(settings: dict) -> int:
    return int(settings.get("transform_args.image_size", [IMAGE_SIZE])[0])


def calibrate(args: argparse.Namespace, data: Path, teacher: Path, name: str) -> dict:
    """Seconds per step and start-up seconds of a short run of this setting (cached per setting): image size,
    augmentations and mixup all change the cost of a step."""
    tag = f"{tag_of(name)}-workers{args.num_workers}"
    path = args.workdir / "calibration" / f"{tag}.json"

    def measure() -> dict:
        out = args.workdir / "calibration" / tag
        wall = run_train(train_command(out, data, teacher, settings_for(name), epochs=1000,
                                       max_steps=CALIBRATION_STEPS, seed=args.seed, num_workers=args.num_workers))  # fmt: skip
        records = _read_jsonl(out / "metrics.jsonl")
        per_step = statistics.median(BATCH_SIZE / r["images_per_second"] for r in records[2:])
        return {"seconds_per_step": per_step, "startup_seconds": max(0.0, wall - per_step * len(records))}

    calibration = dict(cached(path, measure))
    # A finished run of the same setting knows better: its wall time per step includes checkpoints, the export
    # and the machine's speed over minutes rather than seconds (this VM drifts by up to ~20%). The longest such
    # run is used when it was slower, so a budget bounds the wall time rather than being overshot.
    runs = [json.loads(p.read_text()) for p in (args.workdir / "runs").glob(f"{tag_of(name)}-*min*/result.json")]
    if runs:
        longest = max(runs, key=lambda r: r["steps"])
        observed = (longest["wall_s"] - calibration["startup_seconds"]) / longest["steps"]
        calibration["seconds_per_step"] = max(calibration["seconds_per_step"], observed)
    return calibration


def distill(args: argparse.Namespace, data: Path, teacher: Path, name: str, minutes: float | None,
            fixed_steps: int | None = None, cached_only: bool = False) -> dict | None:  # fmt: skip
    """One distillation run of ``name``'s settings within ``minutes`` (or for ``fixed_steps`` steps, a side run
    whose wall time is not a budget), probed; cached by name and budget."""
    settings = settings_for(name)
    workers = "" if args.num_workers == "auto" else f"-workers{args.num_workers}"
    budget = f"{fixed_steps}steps" if fixed_steps else f"{minutes:g}min"
    tag = f"{tag_of(name)}-{budget}{workers}"
    out = args.workdir / "runs" / tag

    def compute() -> dict:
        if fixed_steps:
            steps = fixed_steps
        else:
            cal = calibrate(args, data, teacher, name)
            steps = max(1, int((minutes * 60 - cal["startup_seconds"]) / cal["seconds_per_step"]))
        steps_per_epoch = args.num_train // BATCH_SIZE
        epochs = math.ceil(steps / steps_per_epoch)
        command = train_command(out, data, teacher, settings, epochs=epochs, max_steps=steps, seed=args.seed,
                                num_workers=args.num_workers)  # fmt: skip
        print(f"[{tag}] {steps} steps ({epochs} epochs of {steps_per_epoch}): {' '.join(command[2:])}", flush=True)
        wall = run_train(command)
        metrics = probe_student(out / "exported" / "student.pt", data, out / "probe")
        curve = [(r["step"], r["loss"]) for r in _read_jsonl(out / "metrics.jsonl")]
        return {"name": name, "minutes": minutes, "settings": settings, "steps": steps, "epochs": epochs,
                "wall_s": wall, "probe": metrics, "loss_curve": curve}  # fmt: skip

    if cached_only and not (out / "result.json").exists():
        return None
    result = cached(out / "result.json", compute)
    result.setdefault("fixed_steps", bool(fixed_steps))
    print(f"[{tag}] linear top-1 {result['probe']['linear_top1']:.3f}, kNN top-1 {result['probe']['knn_top1']:.3f}, "
          f"{result['steps']} steps in {result['wall_s'] / 60:.1f} min", flush=True)  # fmt: skip
    return result


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- suites


def plan(args: argparse.Namespace, run) -> list[dict]:
    """Run the suite's distillations in order; ``run(name, minutes)`` does (or loads) one."""
    budgets = [float(b) for b in args.budgets.split(",")]
    results = []
    if args.suite == "main":
        return [run(args.headline, args.main_minutes)]
    if args.suite == "report":  # no training: every run of the budgets and ablations suites already measured
        names = [(n, m) for n in dict.fromkeys(["defaults", args.headline]) for m in budgets]
        names += [(n, min(budgets)) for n in [*ABLATIONS, *EXTRA_ABLATIONS]]
        return [r for r in (run(n, m) for n, m in names) if r is not None]
    if args.suite == "steps":
        return [run(name, None) for name in ["defaults", *GRID]]
    if args.suite in ("budgets", "all"):
        results += [run(name, m) for name in dict.fromkeys(["defaults", args.headline]) for m in budgets]
    if args.suite in ("ablations", "all"):
        extra = list(EXTRA_ABLATIONS) if args.ablation_extra else []
        results += [run(name, min(budgets)) for name in [args.headline, *ABLATIONS, *extra]]
    return _unique(results)


def _unique(results: list[dict]) -> list[dict]:
    seen, unique = set(), []
    for r in results:
        if (r["name"], r["minutes"]) not in seen:
            seen.add((r["name"], r["minutes"]))
            unique.append(r)
    return unique


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["main", "budgets", "ablations", "all", "steps", "report"], default="main")
    parser.add_argument("--ablation-extra", action="store_true", help="also the ablations of EXTRA_ABLATIONS")
    parser.add_argument("--steps", type=int, default=300, help="steps of each run of the side-run suite `steps`")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-quality"),
                        help="renders, teacher, runs and cached results (delete it to measure again)")
    parser.add_argument("--budgets", default="5,10,15", help="distillation budgets in minutes")
    parser.add_argument("--headline", default=HEADLINE, help="setting of the main suite's run")
    parser.add_argument("--main-minutes", type=float, default=10.0, help="budget of the main suite's run")
    parser.add_argument("--renders-train", type=int, default=4, help="renders per train digit")
    parser.add_argument("--renders-test", type=int, default=2, help="renders per test digit")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher-width", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", default="auto",
                        help="kubedistill's num_workers for every run (auto: in-process decoding below 8 CPUs)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default WORKDIR/quality.png)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    data, teacher_path, teacher_info = prepare(args)
    args.num_train = sum(1 for _ in (data / "train").glob("*/*.png"))
    probes = args.workdir / "probes"
    teacher_probe = cached(probes / "teacher.json", lambda: probe_teacher(teacher_path, data, IMAGE_SIZE))
    results = plan(args, lambda name, minutes: distill(
        args, data, teacher_path, name, minutes, fixed_steps=args.steps if args.suite == "steps" else None,
        cached_only=args.suite == "report"))  # fmt: skip
    # The random-init student at every image size a run used: resnet18's features at 32 and 64 px differ, and
    # each distilled student is compared with its own starting point.
    sizes = sorted({IMAGE_SIZE, *(image_size_of(r["settings"]) for r in results)})
    random_probes = {size: random_probe(args, data, size) for size in sizes}
    print(f"probe linear top-1: teacher {teacher_probe['linear_top1']:.3f}, random student "
          + ", ".join(f"{p['linear_top1']:.3f} at {size} px" for size, p in random_probes.items()), flush=True)
    png = args.plot or args.workdir / "quality.png"
    plot.write_png(png, random_probes, teacher_probe["linear_top1"], results)
    print_table(args, random_probes, teacher_probe, teacher_info, results, png)


def random_probe(args: argparse.Namespace, data: Path, size: int) -> dict:
    probes = args.workdir / "probes"
    student = probes / f"random_student-{size}px.pt"
    return cached(probes / f"random-{size}px.json", lambda: probe_student(
        export_random_student(student, size, args.seed), data, probes / f"random-{size}px"))  # fmt: skip


def gap_closed(distilled: float, random: float, teacher: float) -> float:
    return (distilled - random) / (teacher - random) if teacher != random else float("nan")


def print_table(args, random_probes: dict[int, dict], teacher_probe: dict, teacher_info: dict,
                results: list[dict], png: Path) -> None:  # fmt: skip
    command = "make bench-quality" if sys.argv[1:] in ([], ["--suite", "main"]) else (
        "python benchmarks/quality/benchmark.py " + " ".join(sys.argv[1:]))
    t_lin = teacher_probe["linear_top1"]
    counts = random_probes[IMAGE_SIZE]
    print(f"\n### Quality: {STUDENT} distilled without labels from a teacher trained with labels (rendered digits, "
          f"{IMAGE_SIZE}x{IMAGE_SIZE})")
    print(f"- command: `{command}`")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_name()}; torch {torch.__version__}")
    print(f"- date: {datetime.date.today().isoformat()}; {counts['num_train']} train / "
          f"{counts['num_val']} test renders; teacher: own classifier {teacher_info['test_accuracy']:.3f}; "
          f"plot: {png}")
    print()
    print("| feature extractor | setting | budget (min) | wall (min) | steps | epochs | linear top-1 | kNN top-1 | "
          "gap closed (linear) | final loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, p in random_probes.items():
        print(f"| random-init student | image size {size} | - | - | - | - | {p['linear_top1']:.3f} | "
              f"{p['knn_top1']:.3f} | 0.00 | - |")
    print(f"| teacher (labels) | its own size, {IMAGE_SIZE} | - | - | - | - | {t_lin:.3f} | "
          f"{teacher_probe['knn_top1']:.3f} | 1.00 | - |")
    for r in results:
        p = r["probe"]
        gap = gap_closed(p["linear_top1"], random_probes[image_size_of(r["settings"])]["linear_top1"], t_lin)
        # Named settings are defined in this file; the table stays readable.
        label = "method defaults (image size 32)" if r["name"] == "defaults" else r["name"]
        budget = "- (fixed steps)" if r.get("fixed_steps") else f"{r['minutes']:g}"
        print(f"| distilled student | {label} | {budget} | {r['wall_s'] / 60:.1f} | "
              f"{r['steps']} | {r['epochs']} | {p['linear_top1']:.3f} | {p['knn_top1']:.3f} | {gap:.2f} | "
              f"{r['loss_curve'][-1][1]:.4f} |")
    print()
    for size, p in random_probes.items():
        print(f"- teacher - random at {size} px (linear top-1): {100 * (t_lin - p['linear_top1']):.1f} points "
              "(the benchmark needs >= 20)")
    ten = [r for r in results if r["minutes"] == 10 and not r.get("fixed_steps")]
    for r in ten:
        gap = gap_closed(r["probe"]["linear_top1"], random_probes[image_size_of(r["settings"])]["linear_top1"], t_lin)
        print(f"- {r['name']} at 10 min: gap closed {gap:.2f} (target >= 0.85: {'met' if gap >= 0.85 else 'NOT met'})")


if __name__ == "__main__":
    main()
