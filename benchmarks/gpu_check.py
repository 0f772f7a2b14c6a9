"""GPU check: whole-step speed, model FLOP utilisation (MFU) and what limits the step, on one NVIDIA GPU.

For each student (``--models``, default resnet18 and resnet50) with the dinov2/vitb14 teacher (random weights,
the official architecture), 224x224, batch ``--batch-size`` (256), in the precision the trainer's
``precision=auto`` picks on that device (bf16-mixed on a GPU with bf16; ``--precision`` overrides), on generated
JPEGs:

1. **loader alone**: images/s of the torch DataLoader (``--workers`` processes) and of DALI (nvJPEG and the
   augmentations on the GPU), each iterated without training: can the loader feed the GPU?
2. **model alone**: images/s of the training step on one batch already on the GPU, eager and compiled
   (``compile=true``): what the GPU can do when the loader costs nothing.
3. **whole step**: ``kubedistill.train`` with each loader (``--loaders``) and compile setting (``--compile``):
   images/s (median over the steps after ``--warmup``), MFU, peak GPU memory, and "GPU busy": whole-step
   images/s over model-alone images/s (1.0: the loader never makes the GPU wait), and, when NVML is
   available, the mean of ``torch.cuda.utilization()`` sampled during the run.
4. **distributed step**: the same run as a process group on the NCCL backend, with the student's BatchNorm
   layers as SyncBatchNorm and DDP: on every visible GPU (``--ddp-devices``) with the global batch scaled so
   each GPU keeps ``--batch-size``; on a machine with one GPU, a group of one (still NCCL, SyncBatchNorm and
   DDP, so their set-up and per-step cost show, not the interconnect).

MFU = counted FLOPs per image (teacher forward + student forward and backward, torch.utils.flop_counter) x
images/s / the device's dense peak in the precision the model runs in (bf16 when the teacher or the student
runs in bf16: the datasheet figure when the GPU is known, else a measured matmul peak; fp32 (TF32 on CUDA):
a measured matmul peak; the table says which). On a CPU without native bf16 ``auto`` means fp32, and so does
the peak: a bf16 peak measured there is an emulated one, far below what the fp32 model runs at. Each
measurement runs in its own process; results are appended to ``--out``/gpu_check.md
as they come, so a run cut short by a time limit keeps what it measured.

Needs an NVIDIA GPU with its driver, a CUDA build of torch, and the project installed with its GPU extra
(``pip install kubedistill[gpu]``, for DALI) or the source tree on PYTHONPATH. Nothing is downloaded. It has
not been timed on a GPU yet; compiling (about a minute per compiled run, by public figures) is most of it, so
under a time limit start with ``--models torchvision/resnet18``. ``--device cpu`` runs every measurement on
the CPU (gloo instead of NCCL, plain BatchNorm, the measured matmul peak): figures without meaning, but a test
of the script itself (tests/test_gpu_check.py runs it so, tiny).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR [--models ...] [--loaders torch,dali]
        [--compile false,true]
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
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s, without sparsity), by a substring of the name.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                         "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0}  # fmt: skip


# --- children: each measurement in a fresh process -----------------------------------------------------------


def _config(args: argparse.Namespace, model: str, data: Path, out: Path, loader: str, compiled: bool) -> dict:
    return {
        "out": str(out), "data": str(data), "model": model, "overwrite": True, "epochs": 1000,
        "method_args": {"teacher": args.teacher, "teacher_weights": "none"}, "batch_size": args.batch_size,
        "max_steps": args.steps, "precision": args.precision, "accelerator": args.device, "log_every_n_steps": 1,
        "num_workers": args.workers, "loader_args": {"backend": loader}, "compile": compiled,
        "transform_args": {"image_size": [args.image_size, args.image_size]},
    }  # fmt: skip


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _group_of_one() -> dict[str, str]:
    """The variables torchrun sets, for a process group of one process (NCCL on a GPU, gloo on a CPU)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}  # fmt: skip


def child_train(spec: dict) -> dict:
    """A whole run: images/s per logged step from metrics.jsonl, peak memory, NVML utilisation samples."""
    import torch
    import yaml

    import kubedistill

    on_gpu = spec["config"]["accelerator"] == "cuda"
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            try:
                samples.append(float(torch.cuda.utilization()))
            except Exception:  # no NVML here: the ratio to the model-alone speed still tells
                return

    sampler = threading.Thread(target=sample, daemon=True)
    if on_gpu:
        sampler.start()
    os.environ.update(spec.get("env", {}))  # a process group of one: as torchrun would start this process
    start = time.perf_counter()
    kubedistill.train(**spec["config"])
    wall = time.perf_counter() - start
    stop.set()
    out = Path(spec["config"]["out"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_second"] for r in records[spec["warmup"] :]]
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]
    # The first samples cover set-up and compiling: keep the last half, when steps run.
    busy = statistics.mean(samples[len(samples) // 2 :]) if len(samples) >= 4 else None
    # With devices=N the training ran in N other processes: this one's memory figure means nothing then.
    memory = torch.cuda.max_memory_allocated() / 2**20 if on_gpu and resolved["world_size"] == 1 else None
    return {"images_per_second": statistics.median(speeds), "wall_s": wall, "nvml_busy": busy,
            "peak_gpu_mib": memory, "loader": resolved.get("loader_backend"), "compile": resolved.get("compile"),
            "world_size": resolved["world_size"]}  # fmt: skip


def child_model_alone(spec: dict) -> dict:
    """The training step on one batch that stays on the GPU (no loader), timed with synchronisation."""
    from kubedistill.config import build_train_config
    from kubedistill.training.trainer import Trainer

    # Enough scheduled steps for the warm-up and the timed ones (the lr schedule is indexed by step).
    trainer = Trainer(build_train_config({**spec["config"], "max_steps": spec["warmup"] + spec["steps"] + 1}))
    trainer.setup()
    try:
        images = next(iter(trainer._epoch_batches())).to(trainer.device)
        for _ in range(spec["warmup"]):
            trainer._train_step(images)
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            trainer._train_step(images)
        _sync(trainer.device)
        seconds = time.perf_counter() - start
    finally:
        trainer.cleanup()
    return {"images_per_second": spec["steps"] * images.shape[0] / seconds}


def child_loader_alone(spec: dict) -> dict:
    """Iterate the loader the trainer builds, without training; the batch is synchronised on the GPU."""
    from kubedistill.config import build_train_config
    from kubedistill.training.trainer import Trainer

    trainer = Trainer(build_train_config(spec["config"]))
    trainer.setup()
    try:
        batches = trainer._epoch_batches()
        for _ in range(spec["warmup"]):
            next(batches).to(trainer.device, non_blocking=True)
        _sync(trainer.device)
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            next(batches).to(trainer.device, non_blocking=True)
        _sync(trainer.device)
        seconds = time.perf_counter() - start
    finally:
        trainer.cleanup()
    return {"images_per_second": spec["steps"] * spec["config"]["batch_size"] / seconds}


def child_flops(spec: dict) -> dict:
    """FLOPs per image of a training step (teacher forward + student forward and backward), counted at batch 8."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kubedistill.methods.distillation.loss import distillation_loss
    from kubedistill.models.students import build_student
    from kubedistill.models.teachers import load_teacher
    from kubedistill.training.precision import resolve_precision

    device, size = torch.device(spec["device"]), spec["image_size"]
    plan = resolve_precision(spec["precision"], device)
    teacher = load_teacher(spec["teacher"], weights="none").to(device)
    student = build_student(spec["model"], image_size=(size, size)).to(device)
    head = torch.nn.Linear(student.feature_dim, teacher.embed_dim).to(device)
    images = torch.randn(8, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad(), plan.teacher_autocast(device):
            target = torch.nn.functional.normalize(teacher(images).float(), dim=-1)
        with plan.student_autocast(device):
            vectors = torch.nn.functional.normalize(head(student(images)).float(), dim=-1)
        distillation_loss(vectors, target, target, temperature=0.07).backward()
    return {"flops_per_image": counter.get_total_flops() / 8}


CHILDREN = {"train": child_train, "model": child_model_alone, "loader": child_loader_alone, "flops": child_flops}


def run_child(kind: str, spec: dict, timeout: float) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import gpu_check; " \
           f"print('RESULT ' + json.dumps(gpu_check.CHILDREN[{kind!r}](json.loads(sys.argv[1]))))"
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0][:300]}"}


# --- the parent -----------------------------------------------------------------------------------------------


def peak_dtype(precision: str, device: str):
    """The dtype whose peak the MFU is a share of: the lower-precision one the step uses (bf16 or fp16 when
    either model runs in it, which makes the MFU of a bf16-teacher/fp32-student run a conservative figure)."""
    import torch

    from kubedistill.training.precision import resolve_precision

    plan = resolve_precision(precision, torch.device(device))
    return plan.teacher_dtype or plan.student_dtype or torch.float32


def peak(device: str, device_name: str, dtype) -> tuple[float, str]:
    """(FLOP/s, where it comes from): the datasheet's dense bf16/fp16 figure when the GPU is known, else the best
    large matmul here in ``dtype`` (fp32 matmuls on CUDA use TF32, as the trainer sets them up for 32-true)."""
    import torch

    if device == "cuda" and dtype in (torch.bfloat16, torch.float16):
        for key, tflops in DATASHEET_BF16_TFLOPS.items():
            if key in device_name:
                return tflops * 1e12, f"datasheet {tflops:.0f} TFLOP/s"
    sys.path.insert(0, str(HERE))
    from flops_breakdown import matmul_peak

    if device == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = True
    size = 8192 if device == "cuda" else 2048
    measured = matmul_peak(dtype, size, torch.device(device)) * 1e9  # it returns GFLOP/s
    return measured, f"measured matmul {measured / 1e12:.2f} TFLOP/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="torchvision/resnet18,torchvision/resnet50")
    parser.add_argument("--teacher", default="dinov2/vitb14")
    parser.add_argument("--loaders", default="torch,dali")
    parser.add_argument("--compile", default="false,true", help="compile settings of the whole-step runs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="torch loader processes (default: all CPUs but one)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    parser.add_argument("--ddp-devices", type=int, default=None,
                        help="processes of the distributed row (default: every visible GPU; 0 skips the row)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precision", default="auto",
                        help="the trainer's precision setting (default auto: bf16-mixed on a GPU with bf16 and on a "
                             "CPU with native bf16, fp32 on other CPUs)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: run every measurement on the CPU, to test this script (the figures mean nothing)")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.md")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs an NVIDIA GPU and a CUDA build of torch "
                         "(--device cpu runs it on the CPU, to test the script)")  # fmt: skip
    args.workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    models = [m for m in args.models.split(",") if m]
    loaders = [x for x in args.loaders.split(",") if x]
    compiles = [c.strip().lower() == "true" for c in args.compile.split(",") if c]
    on_gpu = args.device == "cuda"
    sys.path.insert(0, str(HERE))
    from common import cpu_name

    name = torch.cuda.get_device_name() if on_gpu else cpu_name()
    gpus = torch.cuda.device_count() if on_gpu else 0
    ddp = args.ddp_devices if args.ddp_devices is not None else (gpus if on_gpu else 2)
    from kubedistill.training.precision import resolve_precision

    args.precision = resolve_precision(args.precision, torch.device(args.device)).name  # the same in every child
    dtype = peak_dtype(args.precision, args.device)
    dtype_name = str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace("float", "fp")
    top, peak_source = peak(args.device, name, dtype)
    size = args.image_size
    lines = [
        f"### GPU check: {', '.join(models)} + {args.teacher} (random weights), {size}x{size}, batch "
        f"{args.batch_size} per device, {args.precision}, on {args.device}",
        f"- command: `python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {name} ({gpus} visible GPUs); torch "
        f"{torch.__version__}; date: {datetime.date.today().isoformat()}; torch loader: {args.workers} worker "
        "processes",
        f"- MFU against the {peak_source} {dtype_name} peak; {args.steps} steps per run, median over steps after "
        f"{args.warmup}",
        "",
        "| student | measurement | loader | compiled | images/s | MFU | GPU busy (vs model alone) | NVML busy | "
        "peak GPU MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def emit(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")

    for line in lines[:-1]:
        print(line, flush=True)
    emit(lines.pop())
    from train_speed import make_images

    with tempfile.TemporaryDirectory(prefix="kubedistill-gpu-") as tmp:
        data = Path(tmp) / "images"
        make_images(data, args.batch_size * max(1, ddp) * (args.steps + args.warmup + 2))
        for model in models:
            flops = run_child("flops", {"model": model, "teacher": args.teacher, "device": args.device,
                                        "image_size": size, "precision": args.precision}, args.timeout)  # fmt: skip
            per_image = flops.get("flops_per_image")

            def mfu(rate: float, flops_per_image: float | None = per_image) -> str:
                return f"{flops_per_image * rate / top:.1%}" if flops_per_image else "n/a"

            for loader in loaders:
                spec = {"config": _config(args, model, data, Path(tmp) / "l", loader, False),
                        "steps": args.steps, "warmup": 2}  # fmt: skip
                r = run_child("loader", spec, args.timeout)
                emit(f"| {model} | loader alone | {loader} | - | {_rate(r)} | - | - | - | - |")
            alone = {}
            for compiled in compiles:
                spec = {"config": _config(args, model, data, Path(tmp) / "m", "torch", compiled),
                        "steps": args.steps, "warmup": 3}  # fmt: skip
                r = alone[compiled] = run_child("model", spec, args.timeout)
                rate = r.get("images_per_second")
                emit(f"| {model} | model alone | - | {compiled} | {_rate(r)} | {mfu(rate) if rate else 'n/a'} | "
                     "- | - | - |")  # fmt: skip
            for compiled in compiles:
                for loader in loaders:
                    out = Path(tmp) / f"run-{loader}-{compiled}"
                    spec = {"config": _config(args, model, data, out, loader, compiled), "warmup": args.warmup}
                    r = run_child("train", spec, args.timeout)
                    rate, model_rate = r.get("images_per_second"), alone[compiled].get("images_per_second")
                    busy = f"{rate / model_rate:.0%}" if rate and model_rate else "n/a"
                    nvml = f"{r['nvml_busy']:.0f}%" if r.get("nvml_busy") is not None else "n/a"
                    memory = f"{r['peak_gpu_mib']:.0f}" if r.get("peak_gpu_mib") is not None else "n/a"
                    emit(f"| {model} | whole step | {loader} | {compiled} | {_rate(r)} | "
                         f"{mfu(rate) if rate else 'n/a'} | {busy} | {nvml} | {memory} |")  # fmt: skip
            if ddp:
                # The best loader of the list, eager: what this row adds is the process group, not the loader.
                loader = "dali" if "dali" in loaders and on_gpu else loaders[0]
                config = _config(args, model, data, Path(tmp) / "run-ddp", loader, False)
                config["batch_size"] = args.batch_size * ddp
                spec = {"config": config, "warmup": args.warmup}
                if ddp == 1:
                    spec["env"] = _group_of_one()
                else:
                    config["devices"] = ddp
                r = run_child("train", spec, args.timeout)
                rate = r.get("images_per_second")
                backend = "NCCL, SyncBatchNorm" if on_gpu else "gloo"
                per_device = f"{rate / ddp:.0f} per device, " if rate else ""
                emit(f"| {model} | whole step, DDP x {ddp} ({backend}) | {loader} | False | {per_device}"
                     f"{_rate(r)} in all | {mfu(rate / ddp) if rate else 'n/a'} | - | - | - |")  # fmt: skip
            emit(f"| {model} | FLOPs per image | - | - | {per_image / 1e9:.1f} GFLOP | - | - | - | - |"
                 if per_image else f"| {model} | FLOPs per image | - | - | {flops.get('error')} | - | - | - | - |")


def _rate(result: dict) -> str:
    return f"{result['images_per_second']:.0f}" if "images_per_second" in result else result.get("error", "n/a")


if __name__ == "__main__":
    main()
