"""``compile=auto|true|false``: whether to ``torch.compile`` the frozen teacher and the trained student, and
doing it in place with a timed warm-up and a fallback to eager execution.

The decision weighs a one-off cost (compiling: the teacher's forward, the student's forward and backward)
against a per-image saving. ``auto`` compiles on CUDA only when the run processes enough images per device to
repay the compile time with a margin (``CUDA_COST``, ``REPAY_MARGIN``), and never on a CPU (``CPU_COST``,
measured here). Numbers and sources: BENCHMARKS.md, "torch.compile", and ``benchmarks/compile_speed.py``.

Both parts are compiled in place (``nn.Module.compile``): the module objects, their parameters and their
state_dict keys stay the same, so checkpoints, exports, the optimizer and DDP see nothing new.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from kubedistill.errors import ConfigError

logger = logging.getLogger(__name__)

CompileSetting = bool | Literal["auto"]


@dataclass(frozen=True)
class CompileCost:
    """What compiling costs once and saves per image on one kind of device (teacher + student together)."""

    compile_seconds: float  # cold cache: teacher forward + student forward and backward
    eager_seconds_per_image: float  # an eager training step's time divided by its per-device batch
    saved_fraction: float  # share of that step time the compiled models save (1 - 1/speedup)
    source: str

    def break_even_images(self) -> float:
        """Images per device after which the time saved equals the compile time (inf: never)."""
        saved = self.eager_seconds_per_image * self.saved_fraction
        return math.inf if saved <= 0 else self.compile_seconds / saved


# Not measured on a GPU yet (no machine here has one): public figures and an estimate, to be replaced by
# `benchmarks/compile_speed.py --device cuda`. Compile time: a cold-cache inductor compile of resnet50's AMP
# training step takes ~56 s on an A100 (TorchBench dashboard, pytorch/benchmark#1547) and a timm ViT's forward
# ~24 s (pytorch/pytorch#93531); resnet18 + ViT-B/14 forward: ~90 s. Eager step: a ViT-B/14 forward at 224 px
# is ~46 GFLOP, resnet18's forward + backward ~11 GFLOP; at ~40% of an H100/H200's bf16 peak that is
# ~0.3 ms per image. Saving: inductor trains timm/TorchBench models ~1.2-1.4x faster under AMP on an A100
# (PyTorch 2.0 announcement: 43% faster over 163 models; open_clip#610: ViT-S/16 +27%, RN50 +15%), less where
# cuBLAS GEMMs and flash attention already dominate, as in a ViT-B teacher: 15% is assumed.
CUDA_COST = CompileCost(
    compile_seconds=90.0,
    eager_seconds_per_image=0.3e-3,
    saved_fraction=0.15,
    source="estimate from public figures (A100/H100), not measured here",
)
# Measured here: benchmarks/compile_speed.py on a 2-core AMD EPYC with AVX512-BF16, torch 2.14.1, bf16-mixed,
# resnet18 + dinov2/vitb14 at 224 px, batch 16, eager and compiled copies timed in turn (BENCHMARKS.md,
# "torch.compile"): teacher forward 1.01x, step with the teacher compiled 1.01x, with both compiled 0.99x, for
# 26 + 28 s of compile time. Most of the time is oneDNN's bf16 matmuls and channels-last convolutions, which
# eager already calls; what inductor fuses around them is small here. (Earlier runs that timed one variant
# after the other ranged 0.96x-1.06x: noise on a shared machine.)
CPU_COST = CompileCost(
    compile_seconds=54.0,
    eager_seconds_per_image=1 / 5.84,
    saved_fraction=-0.009,
    source="benchmarks/compile_speed.py on a 2-core AMD EPYC (BENCHMARKS.md)",
)
# The time saved must reach this multiple of the compile time: the CUDA figures are estimates, so a saving
# half as large as assumed must still repay the compile.
REPAY_MARGIN = 2.0


@dataclass(frozen=True)
class CompileDecision:
    """Which parts to compile, and why (logged and written to config.yaml's ``resolved`` section)."""

    teacher: bool
    student: bool
    reason: str


@dataclass(frozen=True)
class CompileResult:
    """How compiling one part went. ``seconds``: compilation plus one warm-up call (the time a run loses);
    ``error``: why it fell back to eager execution, None when it compiled."""

    compiled: bool
    seconds: float
    error: str | None = None


def compile_setting_problems(setting: Any) -> list[str]:
    """Problems with a ``compile`` value, in config.py's style ([] when it is fine)."""
    if isinstance(setting, bool) or setting == "auto":
        return []
    return [
        f"compile: got {setting!r}, expected 'auto' (compile on CUDA for runs long enough to repay the compile "
        "time), true (compile on any device) or false (never)"
    ]


def min_images_to_compile(cost: CompileCost = CUDA_COST) -> float:
    """Images per device from which ``auto`` compiles: ``REPAY_MARGIN`` times the break-even point (rounded to
    a whole image, so that float rounding cannot move the threshold)."""
    needed = REPAY_MARGIN * cost.break_even_images()
    return needed if math.isinf(needed) else float(round(needed))


def decide_compile(
    setting: CompileSetting,
    *,
    device: torch.device,
    total_steps: int,
    per_device_batch: int,
    world_size: int = 1,
) -> CompileDecision:
    """Resolve ``compile`` for ``total_steps`` steps still to run (a resumed run has fewer than its total) of
    ``per_device_batch`` images each on ``device``.

    ``true``: teacher and student, on any device. ``false``: nothing. ``auto``: nothing on a CPU or other
    non-CUDA device; on CUDA, the teacher and student once ``total_steps * per_device_batch`` reaches
    ``min_images_to_compile()``, except the student of a multi-process CUDA run: there its BatchNorm layers
    become SyncBatchNorm, which runs collectives inside an autograd Function in every layer; that has not been
    run compiled here (no multi-GPU machine), so ``auto`` keeps that student eager and ``true`` compiles it.
    """
    problems = compile_setting_problems(setting)
    if problems:
        raise ConfigError(problems)
    if total_steps <= 0:
        return CompileDecision(False, False, f"compile={str(setting).lower()}: no steps left to run")
    if setting is True:
        return CompileDecision(True, True, f"compile=true: teacher and student compiled on {device.type}")
    if setting is False:
        return CompileDecision(False, False, "compile=false")
    if device.type != "cuda":
        return CompileDecision(False, False, _cpu_reason(device))
    images = total_steps * per_device_batch
    needed = min_images_to_compile()
    if images < needed:
        return CompileDecision(
            False, False,
            f"compile=auto: off, a short run ({total_steps} steps x {per_device_batch} images per device = "
            f"{images:,} < {needed:,.0f} images needed to repay ~{CUDA_COST.compile_seconds:.0f} s of compile "
            f"time {REPAY_MARGIN:g}x)",
        )  # fmt: skip
    student = world_size == 1
    parts = "teacher and student" if student else "teacher only (a SyncBatchNorm student stays eager)"
    return CompileDecision(
        True, student,
        f"compile=auto: on, {parts}: {images:,} images per device >= {needed:,.0f} "
        f"(~{CUDA_COST.compile_seconds:.0f} s of compile time repaid {REPAY_MARGIN:g}x)",
    )  # fmt: skip


def _cpu_reason(device: torch.device) -> str:
    if device.type != "cpu":
        return f"compile=auto: off on {device.type} (auto compiles on CUDA only)"
    return (
        f"compile=auto: off on cpu (measured: ~{CPU_COST.compile_seconds:.0f} s to compile, and the compiled "
        f"step was {-CPU_COST.saved_fraction:.0%} slower; compile=true compiles anyway)"
    )


# --------------------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------------------


def example_batch(
    batch_size: int, image_size: Sequence[int], device: torch.device, *, channels_last: bool = False
) -> torch.Tensor:
    """A zero batch shaped, typed and laid out like the training batches: (B, 3, H, W) float32.

    Compiled code is specialised to (and guarded on) shape, dtype, device and strides: a warm-up batch that
    differs in any of them would make the first training step compile again, outside the timed warm-up.
    Zeros, not random numbers: the warm-up must not draw from the training's random streams.
    """
    images = torch.zeros(batch_size, 3, *image_size, device=device)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def compile_teacher(
    teacher: nn.Module,
    example: torch.Tensor,
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    backend: str | Callable = "inductor",
) -> CompileResult:
    """Compile the frozen ``teacher`` in place and warm it up on ``example`` as the trainer calls it: under
    ``no_grad`` and ``autocast`` (the teacher's precision). Falls back to eager execution with a warning.

    ``dynamic=False``: batches have one shape (the loader drops the last partial batch), so static shapes
    give the most specialised kernels. ``fullgraph=True``: the ViT teacher traces as one graph; a teacher that
    does not falls back to eager instead of running as fragments (a TorchScript teacher is not tried).
    Default mode: no CUDA graphs ("reduce-overhead": a ViT-B forward at training batch sizes is a few long
    kernels, launch overhead is small) and no GEMM autotuning ("max-autotune": minutes more compile for
    matmuls cuBLAS already runs near peak). No ``freezing`` (weights folded in as constants, which a frozen
    teacher would allow): on this CPU it was no faster (7.09 vs 7.06 images/s with and without).
    """
    if any(isinstance(layer, torch.jit.ScriptModule) for layer in teacher.modules()):
        reason = "a TorchScript teacher: torch.compile cannot trace it"
        logger.info("the teacher runs eagerly: %s", reason)
        return CompileResult(compiled=False, seconds=0.0, error=reason)

    def warm_up() -> None:
        with torch.no_grad(), autocast or contextlib.nullcontext():
            teacher(example)

    return _compile_in_place(
        "teacher", teacher, warm_up, example.device, backend=backend, dynamic=False, fullgraph=True
    )


def compile_student(
    student: nn.Module,
    example: torch.Tensor,
    *,
    autocast: contextlib.AbstractContextManager | None = None,
    backend: str | Callable = "inductor",
) -> CompileResult:
    """Compile the trained ``student`` in place and warm up its forward and backward on ``example`` in train
    mode under ``autocast`` (the student's precision). Falls back to eager execution with a warning.

    Call it after ``distributed.wrap_ddp``: DDP wraps the method that holds the student, and compiling that
    inner module (not the DDP wrapper) is the way PyTorch documents for DDP; compiled after the wrap, the
    trace sees the final layers (SyncBatchNorm on CUDA). DDP's gradient hooks ignore the warm-up's backward
    (no DDP forward has run yet). The warm-up leaves no trace: BatchNorm statistics are restored, gradients
    cleared. ``fullgraph=False``: students are any torchvision/timm model; a graph break costs speed only.
    """

    def warm_up() -> None:
        with _restored_state(student):
            with autocast or contextlib.nullcontext():
                features = student(example)
            features.float().sum().backward()

    return _compile_in_place("student", student, warm_up, example.device, backend=backend, dynamic=False)


def _compile_in_place(
    part: str, module: nn.Module, warm_up: Callable[[], None], device: torch.device, **compile_args: Any
) -> CompileResult:
    start = time.perf_counter()
    try:
        module.compile(**compile_args)
        warm_up()  # compilation happens here, at the first call (the backward's at the first backward)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    # torch.compile fails in many ways (no C++ compiler, no Triton, an unsupported op), each its own type.
    except Exception as error:
        module._compiled_call_impl = None  # what nn.Module.compile set: calls run eagerly again
        cause = _describe(error)
        logger.warning(
            "torch.compile of the %s failed, it runs eagerly instead (%s). Training continues; set "
            "compile=false to skip the attempt, or fix the cause (CPU: a working C++ compiler; CUDA: Triton)",
            part, cause,
        )  # fmt: skip
        return CompileResult(compiled=False, seconds=time.perf_counter() - start, error=cause)
    seconds = time.perf_counter() - start
    logger.info("compiled the %s in %.1f s (compilation + one warm-up call)", part, seconds)
    return CompileResult(compiled=True, seconds=seconds)


def _describe(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause (dynamo wraps the backend's error, sometimes twice)."""
    while True:
        inner = getattr(error, "inner_exception", None) or error.__cause__  # BackendCompilerFailed: the former
        if not isinstance(inner, BaseException):
            break
        error = inner
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _restored_state(module: nn.Module) -> Iterator[None]:
    """Run in train mode, then put back the buffers (BatchNorm statistics), gradients and mode as they were."""
    was_training = module.training
    buffers = {name: buffer.detach().clone() for name, buffer in module.named_buffers()}
    grads = {name: p.grad for name, p in module.named_parameters()}
    module.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                buffer.copy_(buffers[name])
        for name, p in module.named_parameters():
            p.grad = grads[name]
        module.train(was_training)


# --------------------------------------------------------------------------------------------------
# The trainer's entry point
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompileReport:
    """The decision and, for each part it compiled, the outcome."""

    decision: CompileDecision
    teacher: CompileResult | None = None
    student: CompileResult | None = None

    def resolved(self) -> dict[str, Any]:
        """For config.yaml's ``resolved`` section, e.g. ``{"teacher": {"compiled": True, "seconds": 41.2},
        "student": {"compiled": False}, "reason": "compile=auto: ..."}``; a failed part also has ``error``."""
        parts = {"teacher": _outcome(self.teacher), "student": _outcome(self.student)}
        return {**parts, "reason": self.decision.reason}


def _outcome(result: CompileResult | None) -> dict[str, Any]:
    if result is None:
        return {"compiled": False}
    return {k: round(v, 1) if k == "seconds" else v for k, v in asdict(result).items() if v is not None}


def compile_models(
    decision: CompileDecision,
    *,
    teacher: nn.Module,
    student: nn.Module,
    example: torch.Tensor,
    teacher_autocast: contextlib.AbstractContextManager | None = None,
    student_autocast: contextlib.AbstractContextManager | None = None,
) -> CompileReport:
    """Compile what ``decision`` says, in place; returns how it went."""
    logger.info("%s", decision.reason)
    report = CompileReport(decision)
    if decision.teacher:
        report = replace(report, teacher=compile_teacher(teacher, example, autocast=teacher_autocast))
    if decision.student:
        report = replace(report, student=compile_student(student, example, autocast=student_autocast))
    return report
