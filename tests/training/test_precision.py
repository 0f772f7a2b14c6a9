import pytest
import torch

from kubedistill.errors import ConfigError
from kubedistill.models.teachers import load_teacher
from kubedistill.training.precision import (
    cast_frozen_matmul_weights_,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "teacher", "student"),
    [("32-true", False, False), ("bf16-teacher", True, False), ("bf16-mixed", True, True)],
)
def test_explicit_precisions(name, teacher, student):
    plan = resolve_precision(name, CPU)
    assert (plan.name, plan.teacher_bf16, plan.student_bf16) == (name, teacher, student)


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    monkeypatch.setattr("kubedistill.training.precision.cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", CPU).name == "bf16-mixed"
    monkeypatch.setattr("kubedistill.training.precision.cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", CPU).name == "32-true"


def test_autocast_contexts_change_matmul_dtype():
    plan = resolve_precision("bf16-teacher", CPU)
    a = torch.randn(4, 4)
    with plan.teacher_autocast(CPU):
        assert (a @ a).dtype == torch.bfloat16
    with plan.student_autocast(CPU):
        assert (a @ a).dtype == torch.float32


def test_fast_bf16_detection_returns_a_bool():
    assert isinstance(cpu_has_fast_bf16(), bool)


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="accelerator: cuda was asked for but no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_pre_cast_teacher_gives_the_autocast_result_bit_for_bit():
    """Pre-casting a frozen teacher's matmul weights changes nothing autocast computes: autocast rounds the
    fp32 weights to the same bf16 values on every call. Norm parameters stay fp32."""
    teacher = load_teacher("dinov2/vits14", weights="none")
    images = torch.randn(2, 3, 56, 56)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = teacher(images)
    cast = cast_frozen_matmul_weights_(teacher)
    assert cast == 1 + 12 * 4  # patch embedding + (qkv, proj, fc1, fc2) per block
    assert teacher.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert teacher.backbone.norm.weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = teacher(images)
    assert torch.equal(before, after)


def test_trainable_layers_are_never_cast():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)
    assert cast_frozen_matmul_weights_(model) == 1
    assert (model[0].weight.dtype, model[1].weight.dtype) == (torch.bfloat16, torch.float32)
