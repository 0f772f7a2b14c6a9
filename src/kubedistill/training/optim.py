"""Optimizers (LARS, AdamW), their parameter groups, and the per-step learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kubedistill.methods.distillation.args import AdamWArgs, LARSArgs


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For a parameter w with gradient g in a group with ``lars=True``:
        g <- g + wd * w
        g <- g * trust * ||w|| / (||g_raw|| + wd * ||w|| + eps)   (only if ||w|| > 0 and ||g_raw|| > 0)
        v <- momentum * v + g;  w <- w - lr * v
    Groups with ``lars=False`` (biases, norm parameters) skip the adaptation; they usually have wd = 0 too.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> None:
        grad = param.grad
        wd = group["weight_decay"]
        update = grad.add(param, alpha=wd) if wd else grad.clone()
        if group["lars"]:
            param_norm = torch.linalg.vector_norm(param)
            grad_norm = torch.linalg.vector_norm(grad)
            trust = group["trust_coefficient"] * param_norm / (grad_norm + wd * param_norm + group["eps"])
            # Where either norm is 0 (e.g. a zero-initialised layer), fall back to the plain update.
            trust = torch.where((param_norm > 0) & (grad_norm > 0), trust, torch.ones_like(trust))
            update.mul_(trust)
        state = self.state[param]
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = update.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(update)
            update = state["momentum_buffer"]
        param.add_(update, alpha=-group["lr"])


def split_decay_groups(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, no_decay): biases and parameters of normalization layers get neither weight decay nor
    LARS adaptation; every other trainable parameter (conv/linear weights) gets both."""
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    weights: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                is_norm = isinstance(sub, norm_types) or param.ndim <= 1
                (no_decay if is_norm or name.endswith("bias") else weights).append(param)
    return weights, no_decay


def build_optimizer(
    modules: Iterable[nn.Module], args: LARSArgs | AdamWArgs, lr: float
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters of ``modules``, starting at ``lr`` (already scaled)."""
    weights, no_decay = split_decay_groups(modules)
    if isinstance(args, LARSArgs):
        groups = [
            {"params": weights, "weight_decay": args.weight_decay, "lars": True},
            {"params": no_decay, "weight_decay": 0.0, "lars": False},
        ]
        return LARS(
            groups,
            lr=lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            trust_coefficient=args.trust_coefficient,
            eps=args.eps,
        )
    groups = [
        {"params": weights, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=args.betas, eps=args.eps)


def warmup_cosine_schedule(
    *, base_lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> list[float]:
    """lr for every step 0..total_steps-1: linear warmup from ~0 to base_lr, then cosine to min_lr_ratio x base_lr.

    Warmup step i (0-based) uses base_lr * (i + 1) / warmup_steps, so the first step already moves.
    """
    min_lr = base_lr * min_lr_ratio
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = total_steps - warmup_steps
    schedule = [base_lr * (i + 1) / warmup_steps for i in range(warmup_steps)]
    for i in range(decay_steps):
        progress = i / max(decay_steps - 1, 1)
        schedule.append(min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress)))
    return schedule


AUTO_WARMUP_EPOCHS = 10.0
AUTO_WARMUP_FRACTION = 0.1


def resolve_warmup_steps(warmup_epochs: float | str, *, steps_per_epoch: int, total_steps: int) -> int:
    """Warmup steps of a run that takes ``total_steps`` steps (``max_steps`` may stop it before its epochs end).

    ``auto`` = min(10 epochs, 10% of the steps the run takes), so a capped run still warms up briefly and then
    decays; a number of epochs is taken as given (at most the whole run).
    """
    if warmup_epochs == "auto":
        steps = min(AUTO_WARMUP_EPOCHS * steps_per_epoch, AUTO_WARMUP_FRACTION * total_steps)
    else:
        steps = float(warmup_epochs) * steps_per_epoch
    return min(round(steps), total_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
