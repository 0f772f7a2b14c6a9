import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kubedistill.methods.distillation import Distillation, distillation_loss, mixup
from kubedistill.methods.distillation.head import ProjectionHead


class _Teacher(nn.Module):
    """A fixed random projection of the pooled image: distinct vectors for distinct images."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, dim)
        self.embed_dim = dim

    def forward(self, x):
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1))


class _Recorder(nn.Module):
    """Passes images through ``inner`` and keeps every input it was given."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def _method(teacher: nn.Module | None = None, **kwargs) -> Distillation:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    teacher = teacher if teacher is not None else _Teacher().requires_grad_(False)
    return Distillation(
        student=student, student_dim=8, teacher=teacher, teacher_dim=16, queue_size=8, **kwargs
    )


def _index_images(batch: int) -> torch.Tensor:
    """(B, 3, 4, B) images, image i all zero but pixel [0, 0, i] = 1: a mix of images reads back as one weight
    per source image."""
    images = torch.zeros(batch, 3, 4, batch)
    images[torch.arange(batch), 0, 0, torch.arange(batch)] = 1.0
    return images


def _decode_mix(mixed: torch.Tensor) -> tuple[float | None, torch.Tensor]:
    """(lambda, permutation) of a mix of ``_index_images``: row i holds lambda at i and 1 - lambda at perm[i]
    (or 1 at i where perm[i] == i). lambda is None if no image moved."""
    weights = mixed[:, 0, 0, :]
    off_diagonal = weights - torch.diag(weights.diagonal())
    moved = off_diagonal.abs().sum(dim=1) > 0
    perm = torch.where(moved, off_diagonal.argmax(dim=1), torch.arange(len(weights)))
    lams = weights.diagonal()[moved]
    if len(lams) == 0:
        return None, perm
    assert torch.allclose(lams, lams[0]), f"one lambda per batch, got {lams.tolist()}"
    return lams[0].item(), perm


def test_teacher_is_not_a_registered_submodule():
    method = _method()
    assert not any(name.startswith("_teacher") or "proj" in name for name in method.state_dict())
    assert {name.split(".")[0] for name in method.state_dict()} == {"student", "head", "queue"}


def test_loss_uses_the_queue_with_the_current_batch_already_enqueued():
    """LightlyTrain's order (its training_step: _update_queue, then the criterion): the current batch
    joins the queue first, so the loss sees it among the pseudo classes. Checked against the loss computed
    independently from the method's pieces, on a case where the other order gives another value."""
    method = _method(use_mixup=False)  # queue K=8
    torch.manual_seed(1)
    earlier, images = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)

    # First call, empty queue: the only pseudo classes are the batch's own teacher vectors.
    with torch.no_grad():
        student0 = method.head(method.student(earlier))
        teacher0 = F.normalize(method.teacher(earlier), dim=-1)
    first = method(earlier)
    assert first.item() == pytest.approx(distillation_loss(student0, teacher0, teacher0).item(), rel=1e-5)

    queue_before = method.queue.vectors[: method.queue.filled].clone()  # the 4 earlier vectors
    with torch.no_grad():
        student = method.head(method.student(images))
        teacher = F.normalize(method.teacher(images), dim=-1)
    queue_after = torch.cat([teacher, queue_before])  # newest first: now all 8 slots
    loss_after = distillation_loss(student, teacher, queue_after).item()
    loss_before = distillation_loss(student, teacher, queue_before).item()
    assert abs(loss_after - loss_before) > 0.1 * loss_after, (loss_after, loss_before)
    assert method(images).item() == pytest.approx(loss_after, rel=1e-5)


def test_gathered_vectors_are_what_gets_enqueued():
    method = _method(use_mixup=False)
    images = torch.randn(2, 3, 8, 8)
    other_rank = F.normalize(torch.randn(2, 16), dim=-1)
    method(images, gather=lambda t: torch.cat([t, other_rank]))
    assert torch.allclose(method.queue.vectors[2:4], other_rank)
    assert method.queue.filled == 4


def test_student_learns_to_match_the_teacher_on_a_fixed_batch():
    method = _method(use_mixup=False)
    images = torch.randn(8, 3, 8, 8)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(150):
        loss = method(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_mixup_is_one_convex_combination_of_the_batch_with_a_permutation_of_it():
    """lambda and the permutation are read back from the mixed pixels, not replayed from the generator."""
    images = _index_images(8)
    mixed = mixup(images, torch.Generator().manual_seed(3))
    lam, perm = _decode_mix(mixed)
    assert lam is not None and 0.0 <= lam < 1.0
    assert sorted(perm.tolist()) == list(range(8))  # a permutation: every image used exactly once as partner
    assert perm.tolist() != list(range(8))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm], atol=1e-7)
    assert torch.allclose(mixed.sum(dim=(1, 2, 3)), torch.ones(8))  # weights of each mixed image sum to 1


def test_mixup_lambda_is_uniform_on_0_1_and_the_permutation_varies():
    """lambda ~ U(0, 1) per batch (not a Beta, not a constant): 200 batches against the uniform quantiles."""
    images = _index_images(16)
    lams, perms = [], set()
    for seed in range(200):
        lam, perm = _decode_mix(mixup(images, torch.Generator().manual_seed(seed)))
        assert lam is not None and 0.0 <= lam < 1.0
        lams.append(lam)
        perms.add(tuple(perm.tolist()))
    lams.sort()
    # Kolmogorov-Smirnov distance to U(0, 1); 0.096 is the 5% critical value for n=200.
    distance = max(max(abs(v - i / 200), abs(v - (i + 1) / 200)) for i, v in enumerate(lams))
    assert distance < 0.096, distance
    assert len(perms) == 200


def test_teacher_and_student_see_the_very_same_mixed_batch():
    """Consistent teaching: one mix per step, fed to both networks; without mixup both get the batch as is."""
    images = _index_images(8)
    teacher = _Recorder(_Teacher().requires_grad_(False))
    method = _method(teacher=teacher)
    student_inputs = []
    method.student.register_forward_pre_hook(lambda _, args: student_inputs.append(args[0].detach().clone()))
    method(images, generator=torch.Generator().manual_seed(5))
    assert len(teacher.inputs) == len(student_inputs) == 1
    assert torch.equal(teacher.inputs[0], student_inputs[0])
    lam, perm = _decode_mix(teacher.inputs[0])
    assert lam is not None and 0.0 <= lam < 1.0 and perm.tolist() != list(range(8))
    assert torch.allclose(teacher.inputs[0], lam * images + (1 - lam) * images[perm], atol=1e-7)

    method.use_mixup = False
    method(images)
    assert torch.equal(teacher.inputs[1], images) and torch.equal(student_inputs[1], images)


def test_the_teacher_gets_no_gradient_even_if_its_parameters_require_one():
    """teacher_embed runs without autograd: a backward through the loss leaves every teacher .grad None, while
    the student and the head get gradients."""
    teacher = _Teacher()  # deliberately not frozen: the method itself must keep it out of the graph
    method = _method(teacher=teacher, use_mixup=False)
    method(torch.randn(4, 3, 8, 8))  # fill part of the queue so the second loss has earlier pseudo classes
    method(torch.randn(4, 3, 8, 8)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters() if p.requires_grad)


def test_head_weight_is_trunc_normal_std_002_and_bias_keeps_torchs_default():
    """LightlyTrain's head init (init.trunc_normal_(weight, std=0.02), bias untouched). The
    truncation bounds are trunc_normal_'s defaults, +-2 absolute (100 std), so the weights are in effect
    N(0, 0.02^2); torch's default Linear init would be uniform on +-1/sqrt(C) (std 0.0255 for C=512)."""
    torch.manual_seed(0)
    in_dim, out_dim = 512, 768  # resnet18 -> ViT-B/14
    head = ProjectionHead(in_dim, out_dim)
    weight, bias = head.linear.weight.detach(), head.linear.bias.detach()
    assert weight.shape == (out_dim, in_dim)
    assert abs(weight.mean().item()) < 2e-4
    assert weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert weight.abs().max().item() <= 2.0  # trunc_normal_'s bounds a=-2, b=2
    # Normal, not uniform: 4.55% of N(0, s^2) lies beyond 2s; torch's default puts 9.5% past 0.04.
    assert (weight.abs() > 0.04).float().mean().item() == pytest.approx(0.0455, abs=0.002)
    bound = 1 / math.sqrt(in_dim)
    assert bias.abs().max().item() <= bound
    assert bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # U(-b, b), not zeros
