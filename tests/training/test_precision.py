import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from kubedistill.errors import ConfigError
from kubedistill.models.teachers import load_teacher
from kubedistill.training.precision import (
    cast_frozen_matmul_weights_,
    configure_matmul,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_precision,
)

from ..conftest import AVX2_ONLY_ENV, TINY_RUN

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


def _cpu_flags() -> set[str]:
    from pathlib import Path

    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_fast_bf16_detection_matches_the_cpu_flags():
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}
    assert cpu_has_fast_bf16() == (bool(flags & {"avx512_bf16", "amx_bf16"}) and not capped)


def _run_python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, check=False)  # fmt: skip


def test_detection_says_no_where_onednn_is_capped_below_bf16():
    """``make test CPU=avx2``'s setting: oneDNN limited to AVX2, as on a CPU without AVX-512. oneDNN's own check
    would still say yes on any AVX-512 CPU that it is not capped on, so the CPU's flags are asked too."""
    code = "from kubedistill.training.precision import cpu_has_fast_bf16 as f, resolve_precision as r; " \
           "import torch; print(f(), r('auto', torch.device('cpu')).name)"
    done = _run_python(code, AVX2_ONLY_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "32-true"]


# Runs in a process whose oneDNN and ATen kernels are capped at AVX2 (bf16 emulated). Records the dtype of every
# tensor any op produces, below autocast (a dispatch mode sees the ops autocast has already cast).
_NO_BF16_SCRIPT = """
import json, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import kubedistill
from kubedistill.devtools.known_teacher import train_teacher


class Dtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen.update(str(t.dtype) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


root, run = Path(sys.argv[1]), json.loads(sys.argv[2])
rng = np.random.default_rng(0)
for split, count in (("train", 13), ("test", 2)):
    for label in range(10):
        folder = root / split / str(label)
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
with Dtypes() as control, torch.autocast("cpu", dtype=torch.bfloat16):
    torch.ones(2, 2) @ torch.ones(2, 2)
with Dtypes() as teacher:
    info = train_teacher(root / "train", root / "test", root / "teacher.pt", image_size=32, epochs=1, log=lambda _: None)
with Dtypes() as student:
    kubedistill.train(out=str(root / "run"), data=str(root / "train"), max_steps=1, **run)
print("RESULT " + json.dumps({"control": sorted(control.seen), "teacher": sorted(teacher.seen),
                              "student": sorted(student.seen), "teacher_precision": info.get("precision")}))
"""


def test_without_native_bf16_the_demo_teacher_and_a_training_step_never_compute_in_bf16(tmp_path):
    """The demo's known teacher (one epoch) and one `kubedistill train` step on a CPU with AVX2 only: both go
    through precision=auto, so neither produces a single bf16 (or fp16) tensor there."""
    done = _run_python(_NO_BF16_SCRIPT, AVX2_ONLY_ENV, str(tmp_path), json.dumps(TINY_RUN))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert "torch.bfloat16" in result["control"]  # the recorder sees what autocast produces
    for part in ("teacher", "student"):
        assert "torch.float32" in result[part]
        assert not {"torch.bfloat16", "torch.float16"} & set(result[part]), (part, result[part])
    assert result["teacher_precision"] == "32-true"
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["resolved"]
    assert resolved["precision"] == "32-true"


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
