import math

import pytest
import torch
from torch import nn

from kubedistill.methods.distillation import Distillation, DistillationArgs
from kubedistill.methods.distillation.args import AdamWArgs, LARSArgs, scaled_lr
from kubedistill.models.students import build_student
from kubedistill.training.optim import (
    LARS,
    build_optimizer,
    resolve_warmup_steps,
    warmup_cosine_schedule,
)


def test_lr_scaling_rule_sqrt_of_batch_over_1536():
    args = DistillationArgs()
    assert scaled_lr(1.8, 1536, args) == pytest.approx(1.8)
    assert scaled_lr(1.8, 128, args) == pytest.approx(1.8 * math.sqrt(128 / 1536))  # 0.5196
    assert scaled_lr(1.8, 128, args) == pytest.approx(0.519615, rel=1e-5)
    assert scaled_lr(1.8, 384, DistillationArgs(lr_scale_method="linear")) == pytest.approx(0.45)


def test_warmup_epochs_auto_is_min_of_10_and_a_tenth():
    # auto = min(10 epochs, 10% of the steps the run takes); 50 steps per epoch here
    assert resolve_warmup_steps("auto", steps_per_epoch=50, total_steps=100 * 50) == 500  # 10 epochs
    assert resolve_warmup_steps("auto", steps_per_epoch=50, total_steps=3000 * 50) == 500
    assert resolve_warmup_steps("auto", steps_per_epoch=50, total_steps=20 * 50) == 100  # 2 epochs = 10%
    assert resolve_warmup_steps("auto", steps_per_epoch=50, total_steps=30) == 3  # capped by max_steps
    assert resolve_warmup_steps(3, steps_per_epoch=50, total_steps=20 * 50) == 150
    assert resolve_warmup_steps(3, steps_per_epoch=50, total_steps=30) == 30


def test_schedule_at_chosen_steps():
    schedule = warmup_cosine_schedule(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.001)
    assert len(schedule) == 110
    assert schedule[0] == pytest.approx(0.1)  # first warmup step already moves
    assert schedule[4] == pytest.approx(0.5)
    assert schedule[9] == pytest.approx(1.0)  # end of warmup: the peak
    assert schedule[10] == pytest.approx(1.0)  # cosine starts at the peak
    # Cosine midpoint (step 10 + 99/2): halfway between peak and floor.
    mid = 0.001 + 0.5 * (1 - 0.001) * (1 + math.cos(math.pi * 0.5))
    assert (schedule[59] + schedule[60]) / 2 == pytest.approx(mid, rel=1e-3)
    assert schedule[-1] == pytest.approx(0.001)  # ends at min_lr_ratio x lr
    assert all(a >= b for a, b in zip(schedule[10:], schedule[11:], strict=False))


def test_schedule_without_warmup_and_shorter_than_warmup():
    assert warmup_cosine_schedule(base_lr=2.0, total_steps=3, warmup_steps=0, min_lr_ratio=0.5) == pytest.approx(
        [2.0, 1.5, 1.0]
    )
    assert warmup_cosine_schedule(base_lr=1.0, total_steps=2, warmup_steps=5, min_lr_ratio=0.0) == pytest.approx(
        [0.5, 1.0]
    )


def test_lars_groups_of_a_resnet18_student_and_its_head_by_parameter_identity():
    """Built as the trainer builds it (build_optimizer over [student, head]): conv and linear weights get
    weight decay and LARS adaptation; every BatchNorm weight and bias and the head's bias get neither."""
    student = build_student("torchvision/resnet18", image_size=(28, 28))
    teacher = nn.Identity()  # not trained: only its output width (384) matters here
    method = Distillation(student=student, student_dim=512, teacher=teacher, teacher_dim=384, queue_size=16)
    optimizer = build_optimizer([method.student, method.head], LARSArgs(), lr=0.5)
    adapted, plain = optimizer.param_groups
    assert (adapted["lars"], adapted["weight_decay"]) == (True, 1e-6)
    assert (plain["lars"], plain["weight_decay"]) == (False, 0.0)

    modules = list(method.modules())
    weights = [m.weight for m in modules if isinstance(m, nn.Conv2d | nn.Linear)]
    norms = [p for m in modules if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
    biases = [m.bias for m in modules if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None]
    assert biases == [method.head.linear.bias]  # torchvision's resnet convolutions have no bias
    assert len(weights) == 20 + 1 and len(norms) == 2 * 20  # 20 convs, 20 BatchNorms, the head
    assert {id(p) for p in adapted["params"]} == {id(p) for p in weights}
    assert {id(p) for p in plain["params"]} == {id(p) for p in norms + biases}
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(adapted["params"]) + len(plain["params"]) == len(trainable) == 62


def test_lars_update_matches_formula():
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5
    g = torch.tensor([0.6, 0.8])  # ||g|| = 1
    param = nn.Parameter(w.clone())
    param.grad = g.clone()
    opt = LARS([param], lr=0.1, momentum=0.9, weight_decay=0.01, trust_coefficient=0.001, eps=1e-8)
    opt.step()
    trust = 0.001 * 5 / (1 + 0.01 * 5 + 1e-8)
    expected = w - 0.1 * trust * (g + 0.01 * w)
    assert torch.allclose(param.detach(), expected, atol=1e-7)
    # Second step with the same gradient: the momentum buffer is 0.9 * previous update + new update.
    w1 = param.detach().clone()
    param.grad = g.clone()
    opt.step()
    trust1 = 0.001 * w1.norm() / (1 + 0.01 * w1.norm() + 1e-8)
    update1 = trust1 * (g + 0.01 * w1)
    expected2 = w1 - 0.1 * (0.9 * trust * (g + 0.01 * w) + update1)
    assert torch.allclose(param.detach(), expected2, atol=1e-7)


def test_lars_excluded_group_is_plain_sgd():
    param = nn.Parameter(torch.tensor([1.0, -2.0]))
    param.grad = torch.tensor([0.5, 0.5])
    opt = LARS([{"params": [param], "lars": False, "weight_decay": 0.0}], lr=0.1, momentum=0.0)
    opt.step()
    assert torch.allclose(param.detach(), torch.tensor([0.95, -2.05]))


def test_build_optimizer_types_and_groups():
    model = nn.Linear(4, 2)
    lars = build_optimizer([model], LARSArgs(), lr=0.5)
    assert isinstance(lars, LARS)
    assert [g["weight_decay"] for g in lars.param_groups] == [1e-6, 0.0]
    assert [g["lars"] for g in lars.param_groups] == [True, False]
    adamw = build_optimizer([model], AdamWArgs(), lr=0.1)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
