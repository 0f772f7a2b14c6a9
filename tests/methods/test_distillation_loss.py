import math

import pytest
import torch
import torch.nn.functional as F

from kubedistill.methods.distillation import distillation_loss


def _kl_by_hand(student, teacher, queue, temperature):
    """sum_k p_t log(p_t / p_s) with plain floats, for one row."""
    logits_t = [sum(a * b for a, b in zip(teacher, q, strict=True)) / temperature for q in queue]
    logits_s = [sum(a * b for a, b in zip(student, q, strict=True)) / temperature for q in queue]
    z_t = sum(math.exp(v) for v in logits_t)
    z_s = sum(math.exp(v) for v in logits_s)
    p_t = [math.exp(v) / z_t for v in logits_t]
    p_s = [math.exp(v) / z_s for v in logits_s]
    return sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))


def test_loss_matches_hand_computation_on_tiny_example():
    r = math.sqrt(0.5)
    queue = [[1.0, 0.0], [0.0, 1.0], [r, r]]
    students = [[1.0, 0.0], [0.6, 0.8]]
    teachers = [[0.0, 1.0], [0.8, 0.6]]
    temperature = 0.5
    expected = sum(_kl_by_hand(s, t, queue, temperature) for s, t in zip(students, teachers, strict=True)) / 2
    loss = distillation_loss(torch.tensor(students), torch.tensor(teachers), torch.tensor(queue), temperature)
    # Row 0 alone is about 1.022 nats, so this also pins the direction KL(p_t || p_s) and the batch mean.
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.53208, abs=1e-4)


def test_loss_is_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    queue = F.normalize(torch.randn(16, 8), dim=-1)
    teacher = F.normalize(torch.randn(4, 8), dim=-1)
    assert distillation_loss(teacher, teacher, queue).item() == pytest.approx(0.0, abs=1e-6)
    student = F.normalize(torch.randn(4, 8), dim=-1)
    assert distillation_loss(student, teacher, queue).item() > 0.1


def test_masked_slots_are_left_out_of_both_softmaxes():
    torch.manual_seed(1)
    filled = F.normalize(torch.randn(3, 8), dim=-1)
    queue = torch.cat([filled, torch.zeros(5, 8)])  # 5 empty slots
    mask = torch.tensor([True] * 3 + [False] * 5)
    student = F.normalize(torch.randn(2, 8), dim=-1)
    teacher = F.normalize(torch.randn(2, 8), dim=-1)
    masked = distillation_loss(student, teacher, queue, 0.07, queue_mask=mask)
    assert masked.item() == pytest.approx(distillation_loss(student, teacher, filled, 0.07).item(), rel=1e-6)
    # Without the mask the zero vectors take part (logit 0 each) and the value changes.
    assert distillation_loss(student, teacher, queue, 0.07).item() != pytest.approx(masked.item(), rel=1e-3)


def test_student_gradient_is_p_student_minus_p_teacher_through_the_queue():
    """d loss / d s = (p_s - p_t) Q / (T B): the KL direction, the batch mean and the temperature on the
    student side all show in the gradient the optimizer receives."""
    torch.manual_seed(2)
    student = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    teacher = F.normalize(torch.randn(4, 8), dim=-1)
    queue = F.normalize(torch.randn(6, 8), dim=-1)
    temperature = 0.1
    distillation_loss(student, teacher, queue, temperature).backward()
    p_student = torch.softmax(student.detach() @ queue.T / temperature, dim=-1)
    p_teacher = torch.softmax(teacher @ queue.T / temperature, dim=-1)
    expected = (p_student - p_teacher) @ queue / (temperature * 4)
    assert student.grad.abs().max() > 0.05
    assert torch.allclose(student.grad, expected, atol=1e-6)
