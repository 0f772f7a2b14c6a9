"""compile=auto|true|false: the decision table, compiled numerics against eager, the fallback to eager."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import warnings

import pytest
import torch
import yaml
from torch import nn
from torch._dynamo.utils import counters

import kubedistill
from kubedistill.errors import ConfigError
from kubedistill.methods.distillation import Distillation
from kubedistill.models.students import build_student
from kubedistill.models.teachers import load_teacher
from kubedistill.training.compile import (
    CPU_COST,
    CUDA_COST,
    REPAY_MARGIN,
    CompileDecision,
    compile_models,
    compile_student,
    compile_teacher,
    decide_compile,
    example_batch,
    min_images_to_compile,
)
from kubedistill.training.precision import cast_frozen_matmul_weights_

from ..conftest import TINY_RUN, native_bf16

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
SIZE = (28, 28)


def _decide(setting, device=CUDA, steps=100_000, batch=128, world_size=1) -> CompileDecision:
    return decide_compile(setting, device=device, total_steps=steps, per_device_batch=batch, world_size=world_size)


def _small_teacher(bf16: bool = False) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning
        teacher = load_teacher("dinov2/vits14", weights="none")
    if bf16:
        cast_frozen_matmul_weights_(teacher, torch.bfloat16)
    return teacher


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def kubedistill_logs(monkeypatch):
    monkeypatch.setattr(logging.getLogger("kubedistill"), "propagate", True)  # a train test may have unset it


# ---------------------------------------------------------------------------------------------- the decision


def test_the_auto_threshold_is_the_cuda_break_even_point_times_the_margin():
    # 90 s / (0.3 ms/image x 15% saved) = 2.0M images to break even; x2 margin = 4.0M per device.
    assert CUDA_COST.break_even_images() == pytest.approx(2.0e6)
    assert min_images_to_compile() == pytest.approx(REPAY_MARGIN * 2.0e6) == pytest.approx(4.0e6)
    # On the CPU measured here the compiled step was slower: compiling never pays.
    assert CPU_COST.break_even_images() == min_images_to_compile(CPU_COST) == math.inf


@pytest.mark.parametrize(
    ("setting", "device", "steps", "batch", "world_size", "teacher", "student"),
    [
        ("auto", CPU, 10**9, 128, 1, False, False),  # never on a CPU, however long the run
        ("auto", CUDA, 1000, 128, 1, False, False),  # short: 128k images per device
        ("auto", CUDA, 31_249, 128, 1, False, False),  # one step short of 4.0M images
        ("auto", CUDA, 31_250, 128, 1, True, True),  # exactly 4.0M
        ("auto", CUDA, 250_000, 16, 1, True, True),  # small per-device batches need more steps
        ("auto", CUDA, 249_999, 16, 1, False, False),
        ("auto", CUDA, 100_000, 128, 8, True, False),  # multi-GPU: SyncBatchNorm keeps the student eager
        ("auto", torch.device("mps"), 10**9, 128, 1, False, False),
        (True, CPU, 1, 8, 1, True, True),  # true: any device, any length
        (True, CUDA, 1, 8, 4, True, True),
        (False, CUDA, 10**9, 128, 1, False, False),
        (False, CPU, 1, 8, 1, False, False),
        (True, CPU, 0, 8, 1, False, False),  # a finished run being resumed: nothing to compile for
        ("auto", CUDA, 0, 128, 1, False, False),
    ],
)
def test_decide_compile_table(setting, device, steps, batch, world_size, teacher, student):
    decision = _decide(setting, device, steps, batch, world_size)
    assert (decision.teacher, decision.student) == (teacher, student)
    assert decision.reason.startswith(f"compile={str(setting).lower()}")


def test_the_reason_says_why():
    assert _decide("auto", CPU).reason == (
        "compile=auto: off on cpu (measured: ~54 s to compile, and the compiled step was 1% slower; compile=true "
        "compiles anyway)"
    )
    short = _decide("auto", CUDA, steps=1000).reason
    assert "short run" in short and "128,000" in short and "4,000,000" in short
    assert "SyncBatchNorm" in _decide("auto", CUDA, world_size=2).reason


@pytest.mark.parametrize("bad", ["yes", "True", "on", 1, 0, None, "AUTO", 2.0])
def test_a_bad_setting_is_a_config_error_naming_the_choices(bad):
    with pytest.raises(ConfigError) as info:
        _decide(bad)
    assert info.value.problems == [
        f"compile: got {bad!r}, expected 'auto' (compile on CUDA for runs long enough to repay the compile "
        "time), true (compile on any device) or false (never)"
    ]


def test_the_decision_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _decide(True).teacher = False


# ---------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize(
    ("bf16", "tolerance"),
    [
        # Outputs are up to ~3.5 in magnitude (mean ~0.8). fp32: fused kernels reorder float sums; measured
        # max |diff| 2.9e-6 over 5 batches.
        (False, 1e-4),
        # bf16 autocast with pre-cast weights, as the trainer runs it on CPUs with native bf16: inductor keeps
        # intermediates in fp32 where eager rounds each op's output to bf16 (2^-8 relative); measured max
        # |diff| 2.2e-2 over 5 batches, cosine > 0.999999.
        # Slow: a second cold inductor compile (~15 s); the fp32 case keeps the check in the default run.
        pytest.param(True, 5e-2, marks=[pytest.mark.slow, native_bf16]),
    ],
)  # fmt: skip
def test_the_compiled_teacher_gives_the_eager_teachers_vectors(bf16, tolerance):
    """vits14 (random weights) at 28 px under no_grad (and bf16 autocast), as the trainer calls it."""
    eager, compiled = _small_teacher(bf16), _small_teacher(bf16)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    images = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    graphs = _graphs()
    result = compile_teacher(compiled, example_batch(4, SIZE, CPU), autocast=autocast())
    assert result.compiled and result.error is None and result.seconds > 0
    assert _graphs() == graphs + 1  # one graph: fullgraph
    with torch.no_grad(), autocast():
        want, got = eager(images), compiled(images)
    assert _graphs() == graphs + 1  # the warm-up matched the real call: no second compile
    assert got.dtype == want.dtype and got.shape == (4, 384)
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # The direction, which is all the loss uses (it normalizes the vectors), agrees closely in both precisions.
    cosine = nn.functional.cosine_similarity(got.float(), want.float())
    assert cosine.min() > 1 - 1e-4


# ---------------------------------------------------------------------------------------------- fallback


class _Net(nn.Module):
    """Conv + BatchNorm: small, with running statistics that a warm-up could disturb."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean(dim=(2, 3))


def test_a_failing_torch_compile_falls_back_to_eager_with_a_warning(monkeypatch, caplog, kubedistill_logs):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(long details)")

    monkeypatch.setattr(torch, "compile", no_compiler)
    net = _Net()
    with caplog.at_level(logging.WARNING, logger="kubedistill.training.compile"):
        result = compile_teacher(net, torch.zeros(2, 3, 8, 8))
    assert not result.compiled
    assert result.error == "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    [record] = caplog.records
    assert "torch.compile of the teacher failed, it runs eagerly instead" in record.getMessage()
    assert "No working C++ compiler found" in record.getMessage()
    assert net._compiled_call_impl is None  # eager
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_a_backend_failing_at_the_first_call_falls_back_and_leaves_the_student_untouched(caplog, kubedistill_logs):
    """The usual case: compile() succeeds, the backend fails when the warm-up call compiles (no C++ compiler,
    no Triton). The warm-up's forward already ran in train mode: its BatchNorm update must be undone."""

    def broken_backend(graph, example_inputs):
        raise OSError("cc1plus: not found")

    torch.manual_seed(0)
    net = _Net().eval()
    before = copy.deepcopy(net.state_dict())
    with caplog.at_level(logging.WARNING, logger="kubedistill.training.compile"):
        result = compile_student(net, torch.randn(2, 3, 8, 8), backend=broken_backend)
    assert not result.compiled and result.error == "OSError: cc1plus: not found"  # the cause, unwrapped
    assert "cc1plus: not found" in caplog.text
    assert net._compiled_call_impl is None and not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in net.parameters())


def test_the_student_warm_up_compiles_forward_and_backward_and_leaves_no_trace():
    torch.manual_seed(0)
    net = _Net()
    before = copy.deepcopy(net.state_dict())
    calls = []

    def counting_backend(graph, example_inputs):
        calls.append(len(example_inputs))
        return graph.forward

    result = compile_student(net, torch.randn(2, 3, 8, 8), backend=counting_backend)
    assert result.compiled and net.training
    assert len(calls) == 1  # dynamo handed the backend the graph (the backward is AOTAutograd's, not here)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and num_batches_tracked restored
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------------------------------------- training


def _method(student: nn.Module, teacher: nn.Module) -> Distillation:
    return Distillation(student=student, student_dim=512, teacher=teacher, teacher_dim=384, queue_size=16)


@pytest.mark.slow
def test_a_compiled_training_step_runs_and_matches_eager():
    """compile=true on CPU: vits14 teacher + resnet18 student at 28 px, batch 8, two SGD steps in fp32, against
    an eager twin. 50-80 s on 2 cores with a cold inductor cache (compiling the student dominates).

    Measured: losses agree to 5e-7 (relative); first-step gradients differ from float64 gradients by <= 1.3e-5
    (relative norm per tensor) compiled and <= 7e-6 eager. Weights after two steps are not compared
    elementwise: at lr 0.1 the second step amplifies those 1e-5 differences through BatchNorm (up to 1e-3)."""
    torch.manual_seed(0)
    eager = _method(build_student("torchvision/resnet18"), _small_teacher())
    compiled = copy.deepcopy(eager)  # the teacher too: deepcopy follows the tuple that hides it
    assert compiled.teacher is not eager.teacher
    decision = decide_compile(True, device=CPU, total_steps=2, per_device_batch=8)
    graphs = _graphs()
    report = compile_models(decision, teacher=compiled.teacher, student=compiled.student,
                            example=example_batch(8, SIZE, CPU))  # fmt: skip
    assert report.resolved() == {
        "teacher": {"compiled": True, "seconds": round(report.teacher.seconds, 1)},
        "student": {"compiled": True, "seconds": round(report.student.seconds, 1)},
        "reason": "compile=true: teacher and student compiled on cpu",
    }
    compiled_graphs = _graphs()
    assert compiled_graphs > graphs
    losses, first_grads = {}, {}
    for name, method in (("eager", eager), ("compiled", compiled)):
        optimizer = torch.optim.SGD(list(method.student.parameters()) + list(method.head.parameters()), lr=0.1)
        method.train()
        losses[name] = []
        for step in range(2):
            images = torch.randn(8, 3, *SIZE, generator=torch.Generator().manual_seed(step))
            loss = method(images, generator=torch.Generator().manual_seed(10 + step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:
                first_grads[name] = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
            optimizer.step()
            losses[name].append(loss.item())
    assert _graphs() == compiled_graphs  # the warm-ups matched the real steps: nothing compiled again
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    assert first_grads["compiled"].keys() == first_grads["eager"].keys()
    for key, want in first_grads["eager"].items():
        error = (first_grads["compiled"][key] - want).norm() / want.norm()
        assert error < 1e-4, key


# ---------------------------------------------------------------------------------------------- the trainer

FAST = {**TINY_RUN, "transform_args": {"image_size": list(SIZE)}, "max_steps": 2}


def test_a_default_cpu_run_stays_eager_and_says_why(tmp_path, image_folder):
    out = tmp_path / "run"
    kubedistill.train(out=out, data=image_folder, **FAST)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["compile"] == "auto"
    resolved = config["resolved"]["compile"]
    assert resolved["teacher"] == {"compiled": False} and resolved["student"] == {"compiled": False}
    assert resolved["reason"].startswith("compile=auto: off on cpu")
    assert resolved["reason"] in (out / "train.log").read_text()


@pytest.mark.slow
def test_train_with_compile_true_compiles_both_and_logs_the_time(tmp_path, image_folder):
    out = tmp_path / "run"
    result = kubedistill.train(out=out, data=image_folder, compile=True, **FAST)
    assert result.steps == 2 and result.final_loss is not None
    resolved = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["compile"]
    assert resolved["teacher"]["compiled"] and resolved["student"]["compiled"]
    log = (out / "train.log").read_text()
    assert "compiled the teacher in" in log and "compiled the student in" in log
