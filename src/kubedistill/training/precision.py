"""Device and precision choice, and the autocast contexts that follow from it."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from kubedistill.errors import ConfigError

logger = logging.getLogger(__name__)

Precision = Literal["auto", "32-true", "bf16-mixed", "bf16-teacher", "16-mixed"]
# Lightning's spelling, which LightlyTrain users bring: the same device.
ACCELERATOR_ALIASES = {"gpu": "cuda"}


@dataclass(frozen=True)
class PrecisionPlan:
    """Which parts run under autocast, in which dtype. Parameters and optimizer state always stay fp32.

    ``grad_scaler``: fp16 gradients underflow without loss scaling (16-mixed, for GPUs without bf16).
    """

    name: str
    teacher_dtype: torch.dtype | None
    student_dtype: torch.dtype | None
    grad_scaler: bool = False

    @property
    def teacher_bf16(self) -> bool:
        return self.teacher_dtype == torch.bfloat16

    @property
    def student_bf16(self) -> bool:
        return self.student_dtype == torch.bfloat16

    def teacher_autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return _autocast(device, self.teacher_dtype)

    def student_autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return _autocast(device, self.student_dtype)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def cast_frozen_matmul_weights_(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the weights of a frozen module's Linear and Conv layers in ``dtype``, in place; returns how many
    layers were cast.

    Autocast casts every weight to bf16 again on each forward pass unless it is a leaf that requires grad, which
    a frozen teacher's never are: ~170 MB of copies per ViT-B/14 forward. Pre-casting gives the same values
    (autocast would round them identically) without the copies. Norm layers keep their fp32 parameters, as
    autocast runs them in fp32. TorchScript modules are left alone.
    """
    count = 0
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and not any(p.requires_grad for p in layer.parameters()):
            layer.to(dtype)
            count += 1
    return count


def resolve_device(accelerator: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``gpu`` means cuda. Asking for cuda without one is an error."""
    accelerator = ACCELERATOR_ALIASES.get(accelerator, accelerator)
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["accelerator: cuda (gpu) was asked for but no CUDA device is visible; use cpu or auto"])
    return torch.device(accelerator)


def configure_matmul(device: torch.device, plan: PrecisionPlan) -> None:
    """fp32 runs on CUDA use TF32 tensor cores for matmuls and convolutions (10-bit mantissa inputs, fp32
    accumulation): several times faster on Ampere and later, and what "32-true" means in practice there."""
    if device.type == "cuda" and plan.teacher_dtype is None and plan.student_dtype is None:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_has_fast_bf16() -> bool:
    """True where this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX) and oneDNN may use them: there
    bf16 is ~4x faster than fp32. Elsewhere bf16 is emulated (~8x slower than fp32 on an AVX2-only AMD EPYC,
    measured), so it must not be the default.

    Two questions, because each alone misleads: oneDNN's own check says yes on any AVX-512 CPU (it can emulate
    bf16 with AVX-512 instructions), and the CPU's flags ignore ``ONEDNN_MAX_CPU_ISA``, which caps what oneDNN
    uses (``make test CPU=avx2`` sets it to AVX2 to run as on a CPU without AVX-512: bf16 is then emulated).
    """
    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(native and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: Precision, device: torch.device) -> PrecisionPlan:
    """``auto``: bf16-mixed on a CUDA device with bf16 and on a CPU that computes bf16 natively (there it is
    ~2x faster than a bf16 teacher with an fp32 student at 224 px, with the same loss curve: BENCHMARKS.md);
    fp32 otherwise (emulated bf16 is slower than fp32). ``16-mixed``: fp16 autocast with loss scaling, for GPUs
    without bf16 (V100, T4)."""
    if precision == "auto":
        fast_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        precision = "bf16-mixed" if fast_bf16 else "32-true"
    if precision == "16-mixed":
        if device.type != "cuda":
            logger.warning("precision=16-mixed on %s: fp16 is meant for GPUs without bf16; on a CPU it is slow", device)
        return PrecisionPlan(name=precision, teacher_dtype=torch.float16, student_dtype=torch.float16, grad_scaler=True)
    return PrecisionPlan(
        name=precision,
        teacher_dtype=torch.bfloat16 if precision in ("bf16-mixed", "bf16-teacher") else None,
        student_dtype=torch.bfloat16 if precision == "bf16-mixed" else None,
    )
