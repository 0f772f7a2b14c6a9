import contextlib
from unittest import mock

import pytest
import torch
from torch import nn

from kubedistill.errors import ConfigError
from kubedistill.models.students import build_student, check_student_name, torchvision_names

# One of each classifier layout torchvision uses: fc, classifier[-1], heads.head, head, a conv classifier,
# auxiliary-logit models.
REPRESENTATIVE = {
    "resnet18": 512,
    "mobilenet_v3_small": 576,
    "efficientnet_b0": 1280,
    "squeezenet1_1": 512,
    "googlenet": 1024,
    "vit_b_32": 768,
}


@pytest.mark.parametrize(("name", "dim"), sorted(REPRESENTATIVE.items()))
def test_student_gives_pooled_features(name, dim):
    torch.manual_seed(0)
    student = build_student(f"torchvision/{name}", image_size=(64, 64)).train()
    assert student.feature_dim == dim
    with torch.no_grad():
        features = student(torch.randn(4, 3, 64, 64))
    assert features.shape == (4, dim)
    assert torch.isfinite(features).all()
    # Different images give different features: the classifier is gone, not the backbone. (Train mode:
    # some random-init networks give near-constant outputs in eval mode with untouched BN statistics.)
    assert not torch.allclose(features[0], features[1])


def test_inception_v3_in_train_mode_returns_a_tensor():
    student = build_student("torchvision/inception_v3").train()
    features = student(torch.randn(2, 3, 96, 96))
    assert isinstance(features, torch.Tensor) and features.shape == (2, 2048)


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter and buffer lands on the meta device when registered (no memory, no init cost), while
    tensors a constructor computes with stay real: regnet derives its widths from tensors, so a plain
    ``torch.device("meta")`` cannot build it."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter_on_meta(module, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer_on_meta(module, name, tensor, persistent=True):
        register_buffer(module, name, tensor.to("meta") if tensor is not None else None, persistent)

    with mock.patch.object(nn.Module, "register_parameter", parameter_on_meta), \
            mock.patch.object(nn.Module, "register_buffer", buffer_on_meta):  # fmt: skip
        yield


def _leaf_calls(module: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[nn.Module, int]]]:
    """The output, and every leaf module the forward ran, in order, with the ndim of its output."""
    calls: list[tuple[nn.Module, int]] = []
    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, _, out: calls.append((m, out.ndim))) for m in leaves]
    try:
        output = module(images)
    finally:
        for hook in hooks:
            hook.remove()
    return output, calls


# What may run after the last layer with a spatial or token output: the pooled vector's normalisation
# (ConvNeXt, MaxViT), flattening, and the identities left where the classifier was. No Linear, Dropout,
# activation or convolution: those belong to a classifier, not to the pooled features.
AFTER_POOLING = (nn.Identity, nn.Flatten, nn.LayerNorm, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("name", torchvision_names())
def test_every_torchvision_student_ends_at_its_pooled_features(name):
    """Every name in torchvision.models.list_models(module=torchvision.models) builds a student (on the meta
    device: no memory, no compute) whose output is its pooled features, of width ``feature_dim``, with no
    classifier layer left, and no parameter outside the forward (DDP would find it unused)."""
    size = 299 if name == "inception_v3" else 224
    with _parameters_on_meta():
        student = build_student(f"torchvision/{name}")
    assert all(p.is_meta for p in student.parameters())
    features, calls = _leaf_calls(student.train(), torch.empty(2, 3, size, size, device="meta"))
    assert features.shape == (2, student.feature_dim)
    last_spatial = max(i for i, (_, ndim) in enumerate(calls) if ndim > 2)
    after = [type(m).__name__ for m, _ in calls[last_spatial + 1 :]]
    assert all(isinstance(m, AFTER_POOLING) for m, _ in calls[last_spatial + 1 :]), after
    named = [(n, p) for n, p in student.named_parameters()]
    grads = torch.autograd.grad(features.sum(), [p for _, p in named], allow_unused=True)
    assert [n for (n, _), g in zip(named, grads, strict=True) if g is None] == []  # all take part in the output


@pytest.mark.parametrize(
    ("name", "dim", "last"),
    [
        ("mobilenet_v3_small", 576, "AdaptiveAvgPool2d"),  # not Linear(576, 1024) + Hardswish + Dropout
        ("efficientnet_b0", 1280, "AdaptiveAvgPool2d"),  # not Dropout(0.2)
        ("vgg11", 512, "AdaptiveAvgPool2d"),  # global average pooling, not 7x7 + two FC layers + Dropout
        ("alexnet", 256, "AdaptiveAvgPool2d"),
        ("googlenet", 1024, "AdaptiveAvgPool2d"),  # not Dropout(0.2)
        ("convnext_tiny", 768, "LayerNorm2d"),  # the pooled vector's norm is part of the features
        ("maxvit_t", 512, "LayerNorm"),  # pool, flatten, norm; not Linear + Tanh
    ],
)
def test_known_widths_and_what_ends_the_features(name, dim, last):
    with _parameters_on_meta():
        student = build_student(f"torchvision/{name}")
    _, calls = _leaf_calls(student, torch.empty(1, 3, 224, 224, device="meta"))
    real = [type(m).__name__ for m, _ in calls if not isinstance(m, (nn.Identity, nn.Flatten))]
    assert (student.feature_dim, real[-1]) == (dim, last)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("mobilenetv3_small_100", 576)])
def test_timm_student_gives_pooled_features(name, dim):
    """timm's pre-logits output (num_classes=0), without MobileNetV3's 1x1 conv head to 1024 after pooling."""
    student = build_student(f"timm/{name}").eval()
    assert student.feature_dim == dim
    assert student(torch.randn(1, 3, 64, 64)).shape == (1, dim)
    assert not isinstance(getattr(student.backbone, "conv_head", nn.Identity()), nn.Conv2d)


def test_bad_names_are_explained():
    assert "must start with 'torchvision/' or 'timm/'" in check_student_name("resnet18")[0]
    assert "Did you mean torchvision/resnet50" in check_student_name("torchvision/resnet5")[0]
    assert "unknown timm model" in check_student_name("timm/not_a_model_xyz")[0]
    with pytest.raises(ConfigError, match="resnet18"):
        build_student("torchvision/resnet1")
