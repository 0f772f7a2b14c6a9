import torch
import torch.nn.functional as F
from torch import nn

from kubedistill.methods.distillation import Distillation, mixup


class _Teacher(nn.Module):
    """A fixed random projection of the pooled image: distinct vectors for distinct images."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, dim)
        self.embed_dim = dim

    def forward(self, x):
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1))


def _method(**kwargs) -> Distillation:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    teacher = _Teacher().requires_grad_(False)
    return Distillation(student=student, student_dim=8, teacher=teacher, teacher_dim=16, queue_size=8, **kwargs)


def test_teacher_is_not_a_registered_submodule():
    method = _method()
    assert not any(name.startswith("_teacher") or "proj" in name for name in method.state_dict())
    assert {name.split(".")[0] for name in method.state_dict()} == {"student", "head", "queue"}


def test_forward_enqueues_the_batch_before_the_loss():
    method = _method(use_mixup=False)
    images = torch.randn(4, 3, 8, 8)
    method(images)
    expected = method.teacher_embed(images)
    assert torch.allclose(method.queue.vectors[:4], expected)
    assert method.queue.filled == 4


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


def test_mixup_is_a_convex_combination_with_a_permutation():
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    generator = torch.Generator().manual_seed(3)
    mixed = mixup(images, generator)
    replay = torch.Generator().manual_seed(3)
    lam = torch.rand((), generator=replay).item()
    perm = torch.randperm(4, generator=replay)
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[perm])
    # Per image, the mix stays within the range of the batch and keeps the batch mean (a permutation).
    assert torch.allclose(mixed.mean(), images.mean())
