import pytest
import torch

from kubedistill.errors import ConfigError
from kubedistill.models.teachers import load_teacher
from kubedistill.training.precision import (
    cast_frozen_matmul_weights_,
    configure_matmul,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_precision,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "teacher", "student"),
    [("32-true", torch.float32, torch.float32), ("bf16-teacher", torch.bfloat16, torch.float32),
     ("bf16-mixed", torch.bfloat16, torch.bfloat16), ("16-mixed", torch.float16, torch.float16)],
)  # fmt: skip
def test_each_precision_computes_the_teacher_and_the_student_in_its_dtypes(name, teacher, student):
    plan = resolve_precision(name, CPU)
    layer, x = torch.nn.Linear(8, 8), torch.randn(2, 8)
    with plan.teacher_autocast(CPU):
        assert layer(x).dtype == teacher
    with plan.student_autocast(CPU):
        assert layer(x).dtype == student
    assert plan.grad_scaler is (name == "16-mixed")  # fp16 gradients need loss scaling, bf16 ones do not


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


def test_fast_bf16_detection_matches_the_cpu_flags():
    from pathlib import Path

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    assert cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_gpu_means_cuda_and_tf32_is_on_for_fp32_on_cuda():
    with pytest.raises(ConfigError, match="cuda \\(gpu\\) was asked for but no CUDA device"):
        resolve_device("gpu")
    from kubedistill.config import build_train_config

    assert build_train_config({"out": "o", "data": "d", "model": "torchvision/resnet18", "accelerator": "gpu"}).accelerator == "gpu"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_matmul(CPU, resolve_precision("32-true", CPU))
        assert not torch.backends.cuda.matmul.allow_tf32  # nothing changes on a CPU
        configure_matmul(torch.device("cuda"), resolve_precision("bf16-mixed", CPU))
        assert not torch.backends.cuda.matmul.allow_tf32  # nor for mixed precision
        configure_matmul(torch.device("cuda"), resolve_precision("32-true", CPU))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="accelerator: cuda \\(gpu\\) was asked for but no CUDA device"):
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
