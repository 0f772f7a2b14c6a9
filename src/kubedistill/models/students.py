"""Students: any torchvision classification model (or timm model) with its classifier removed.

A student maps (B, 3, H, W) images to (B, C) pooled features, C = ``feature_dim``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kubedistill.errors import ConfigError

TORCHVISION_PREFIX = "torchvision/"
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class StudentInfo:
    """What is needed to rebuild a student from a state_dict: its name and output width."""

    name: str
    feature_dim: int


class Student(nn.Module):
    """A backbone cut after its global pooling (every classifier layer removed): forward gives (B, C) pooled
    features. ``load_hint`` tells users how the library's own model accepts ``backbone``'s state_dict."""

    def __init__(self, backbone: nn.Module, info: StudentInfo, load_hint: str = ""):
        super().__init__()
        self.backbone = backbone
        self.info = info
        self.load_hint = load_hint

    @property
    def feature_dim(self) -> int:
        return self.info.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return torch.flatten(features, start_dim=1)


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def available_students() -> list[str]:
    return [TORCHVISION_PREFIX + n for n in torchvision_names()] + [TIMM_PREFIX + "<any timm model name>"]


def build_student(name: str, *, image_size: tuple[int, int] | None = None) -> Student:
    """A randomly initialised student by name: ``torchvision/<name>`` or ``timm/<name>``.

    ``image_size`` is passed to architectures that fix their input size at construction (torchvision ViTs).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _build_torchvision(name.removeprefix(TORCHVISION_PREFIX), image_size)
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name.removeprefix(TIMM_PREFIX))
    raise ConfigError([f"model: {name!r} must start with 'torchvision/' or 'timm/', e.g. 'torchvision/resnet18'"])


def check_student_name(name: str) -> list[str]:
    """Problems with a model name, without building it (used by config validation)."""
    if name.startswith(TORCHVISION_PREFIX):
        short = name.removeprefix(TORCHVISION_PREFIX)
        names = torchvision_names()
        if short not in names:
            close = difflib.get_close_matches(short, names, n=3)
            hint = f" Did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?" if close else ""
            return [f"model: unknown torchvision model {short!r}.{hint} Valid: torchvision.models.list_models()"]
        return []
    if name.startswith(TIMM_PREFIX):
        return _check_timm_name(name.removeprefix(TIMM_PREFIX))
    return [f"model: {name!r} must start with 'torchvision/' or 'timm/', e.g. 'torchvision/resnet18'"]


def _check_timm_name(short: str) -> list[str]:
    try:
        import timm
    except ImportError:
        return ["model: timm students need the 'timm' package: pip install timm"]
    if not timm.is_model(short):
        close = difflib.get_close_matches(short, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        return [f"model: unknown timm model {short!r}.{hint}"]
    return []


def _build_torchvision(short: str, image_size: tuple[int, int] | None) -> Student:
    import torchvision

    problems = check_student_name(TORCHVISION_PREFIX + short)
    if problems:
        raise ConfigError(problems)
    kwargs = _construction_kwargs(short, image_size)
    backbone = torchvision.models.get_model(short, weights=None, **kwargs)
    removal = remove_classifier(backbone)
    info = StudentInfo(name=TORCHVISION_PREFIX + short, feature_dim=removal.feature_dim)
    return Student(backbone, info, load_hint=removal.load_hint(short, kwargs))


def _construction_kwargs(short: str, image_size: tuple[int, int] | None) -> dict:
    # Auxiliary classifiers only exist for training with labels; they change the forward's return type.
    if short in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    # torchvision ViTs fix their position embeddings at construction; they need square inputs.
    if short.startswith("vit_") and image_size is not None and image_size[0] == image_size[1]:
        return {"image_size": image_size[0]}
    return {}


def remove_classifier(backbone: nn.Module) -> Removal:
    """Cut a torchvision classification model after its global pooling, in place.

    Every layer between the pooling and the logits goes (Dropout, hidden Linear layers, activations), not
    only the last Linear: a student's features are the pooled features, and DDP must see no parameter
    that takes no part in the loss. Normalisations that torchvision applies to the pooled vector (ConvNeXt's
    and MaxViT's LayerNorm) are kept: they are part of the features, as in timm's pre-logits output. VGG and
    AlexNet pool to a 7x7 / 6x6 grid before their fully connected layers; their pooling becomes global
    average pooling, so their features are the 512 / 256 channel means.
    """
    kind = type(backbone).__name__
    cut = _CUTS.get(kind)
    if cut is None:
        raise ConfigError([f"model: kubedistill does not know where the classifier of torchvision's {kind} starts; "
                           "use a timm model instead (model=timm/<name>)"])  # fmt: skip
    return cut(backbone)


@dataclass(frozen=True)
class Removal:
    """What ``remove_classifier`` did: the pooled width and, for users, how to rebuild the same module."""

    feature_dim: int
    replaced: tuple[str, ...]  # attributes now an identity (or global pooling)
    kept: str = ""  # for classifiers cut in the middle: which of its layers stay

    def load_hint(self, name: str, kwargs: dict | None = None) -> str:
        """The torchvision one-liner after which ``torchvision.models.<name>(...)`` loads the backbone's
        state_dict with strict=True."""
        args = ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())
        steps = "; ".join(_hint_step(attr, self.kept) for attr in self.replaced)
        return f"model = torchvision.models.{name}({args}); {steps}; model.load_state_dict(torch.load(path))"


def _hint_step(attr: str, kept: str) -> str:
    if attr == "avgpool":
        return "model.avgpool = torch.nn.AdaptiveAvgPool2d(1)"
    if kept and attr == "classifier":
        return f"model.classifier = model.classifier[:{kept}]"
    return f"model.{attr} = torch.nn.Identity()"


def _identity(*attrs: str, dim: Callable[[nn.Module], int]) -> Callable[[nn.Module], Removal]:
    def cut(backbone: nn.Module) -> Removal:
        feature_dim = dim(backbone)
        for attr in attrs:
            setattr(backbone, attr, nn.Identity())
        return Removal(feature_dim, attrs)

    return cut


def _first_linear_in(attr: str) -> Callable[[nn.Module], int]:
    return lambda m: next(x for x in getattr(m, attr).modules() if isinstance(x, nn.Linear)).in_features


def _last_conv_channels(backbone: nn.Module) -> int:
    return [m for m in backbone.features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _global_pool_features(backbone: nn.Module) -> Removal:
    """VGG / AlexNet: global average pooling of the last conv block; the fully connected layers go."""
    feature_dim = _last_conv_channels(backbone)
    backbone.avgpool = nn.AdaptiveAvgPool2d(1)
    backbone.classifier = nn.Identity()
    return Removal(feature_dim, ("avgpool", "classifier"))


def _keep_classifier_prefix(keep: int) -> Callable[[nn.Module], Removal]:
    """ConvNeXt (LayerNorm2d, Flatten | Linear) and MaxViT (pool, Flatten, LayerNorm | Linear, Tanh, Linear)."""

    def cut(backbone: nn.Module) -> Removal:
        feature_dim = _first_linear_in("classifier")(backbone)
        backbone.classifier = backbone.classifier[:keep]
        return Removal(feature_dim, ("classifier",), kept=str(keep))

    return cut


def _squeezenet(backbone: nn.Module) -> Removal:
    """SqueezeNet's classifier is Dropout, a 1x1 conv to the classes, ReLU, pooling: it becomes global pooling."""
    feature_dim = backbone.classifier[1].in_channels
    backbone.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return Removal(feature_dim, ("classifier",))


_FC = _first_linear_in("fc")
_CLASSIFIER = _first_linear_in("classifier")
# torchvision's class name -> how to cut it. A model torchvision adds later fails the test that builds every
# name in torchvision.models.list_models() until it has an entry here.
_CUTS: dict[str, Callable[[nn.Module], Removal]] = {
    "ResNet": _identity("fc", dim=_FC),
    "RegNet": _identity("fc", dim=_FC),
    "ShuffleNetV2": _identity("fc", dim=_FC),
    "GoogLeNet": _identity("dropout", "fc", dim=_FC),
    "Inception3": _identity("dropout", "fc", dim=_FC),
    "DenseNet": _identity("classifier", dim=_CLASSIFIER),
    "MobileNetV2": _identity("classifier", dim=_CLASSIFIER),
    "MobileNetV3": _identity("classifier", dim=_CLASSIFIER),
    "MNASNet": _identity("classifier", dim=_CLASSIFIER),
    "EfficientNet": _identity("classifier", dim=_CLASSIFIER),
    "SwinTransformer": _identity("head", dim=_first_linear_in("head")),
    "VisionTransformer": _identity("heads", dim=_first_linear_in("heads")),
    "VGG": _global_pool_features,
    "AlexNet": _global_pool_features,
    "ConvNeXt": _keep_classifier_prefix(2),
    "MaxVit": _keep_classifier_prefix(3),
    "SqueezeNet": _squeezenet,
}


# timm heads with a layer after the pooling (MobileNetV3's 1x1 conv_head to 1280/1024, with its norm and
# activation): removed, so the features are the pooled ones, as for torchvision's MobileNetV3.
_TIMM_POST_POOL = ("conv_head", "norm_head", "act2")


def _build_timm(short: str) -> Student:
    problems = _check_timm_name(short)
    if problems:
        raise ConfigError(problems)
    import timm

    backbone = timm.create_model(short, pretrained=False, num_classes=0)  # num_classes=0: timm's pre-logits
    hidden = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    removed = []
    if hidden != backbone.num_features and hasattr(backbone, "conv_head"):
        for attr in _TIMM_POST_POOL:
            if hasattr(backbone, attr):
                setattr(backbone, attr, nn.Identity())
                removed.append(attr)
        hidden = backbone.num_features
    steps = "".join(f"model.{attr} = torch.nn.Identity(); " for attr in removed)
    hint = f"model = timm.create_model({short!r}, num_classes=0); {steps}model.load_state_dict(torch.load(path))"
    return Student(backbone, StudentInfo(name=TIMM_PREFIX + short, feature_dim=hidden), load_hint=hint)
