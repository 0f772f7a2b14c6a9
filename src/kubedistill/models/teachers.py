"""Teachers: frozen DINOv2 backbones (or a user's TorchScript model) mapping images to one vector each.

``load_teacher("dinov2/vitb14")`` downloads (once per node) and loads the official checkpoint;
``weights=`` points at another file in the same state_dict format (path, https:// URL or gs:// URI);
``weights="none"`` gives a random teacher for smoke tests and speed measurements only.
A name that is not in ``TEACHERS`` is taken as a path/URI of a TorchScript file.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kubedistill.errors import WeightsError
from kubedistill.models.vit import DinoV2ViT, ViTConfig
from kubedistill.models.weights import resolve_weights
from kubedistill.storage import is_remote, sha256_file, to_local_path

logger = logging.getLogger(__name__)

DEFAULT_TEACHER = "dinov2/vitb14"
RANDOM_WEIGHTS = "none"
_OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/dinov2_{arch}_pretrain.pth"
# Keys in DINOv2 checkpoints that this teacher does not use: the iBOT mask token (training only).
_IGNORED_KEYS = ("mask_token",)


@dataclass(frozen=True)
class TeacherSpec:
    """A known teacher: its architecture and where its official weights live."""

    name: str
    vit: ViTConfig
    url: str


def _dinov2(arch: str, vit: ViTConfig) -> TeacherSpec:
    return TeacherSpec(name=f"dinov2/{arch}", vit=vit, url=_OFFICIAL_URL.format(arch=arch))


TEACHERS: dict[str, TeacherSpec] = {
    spec.name: spec
    for spec in (
        _dinov2("vits14", ViTConfig(embed_dim=384, depth=12, num_heads=6)),
        _dinov2("vitb14", ViTConfig(embed_dim=768, depth=12, num_heads=12)),
        _dinov2("vitl14", ViTConfig(embed_dim=1024, depth=24, num_heads=16)),
        _dinov2("vitg14", ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu")),
    )
}


class Teacher(nn.Module):
    """A frozen backbone: (B, 3, H, W) normalized images -> (B, D) vectors, not L2-normalized.

    Always in eval mode, even when a parent module calls ``.train()``. Attributes: ``name``, ``embed_dim``,
    ``sha256`` (of the weights file actually loaded; None for random weights).
    """

    def __init__(self, backbone: nn.Module, *, name: str, embed_dim: int, sha256: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.embed_dim = embed_dim
        # The sha256 of the file the weights came from (provenance); None for random weights.
        self.sha256 = sha256
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # A teacher in train mode would change (dropout, batch norm in TorchScript teachers): never allow it.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D)."""
        return self.backbone(images)


def load_teacher(
    name: str = DEFAULT_TEACHER,
    weights: str | None = None,
    sha256: str | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> Teacher:
    """A frozen, eval-mode teacher by name (see ``TEACHERS``) or a TorchScript file's path/URI.

    ``weights``: None -> the official checkpoint for ``name`` (downloaded once, cached); ``"none"`` -> random
    weights (smoke tests and speed measurements only); otherwise a path, https:// URL or gs:// URI of a
    state_dict in the official DINOv2 format. ``sha256`` verifies whichever file is used.
    """
    spec = TEACHERS.get(name)
    if spec is None:
        return _load_torchscript_teacher(name, weights, sha256, cache_dir)
    if weights is not None and str(weights).strip().lower() == RANDOM_WEIGHTS:
        backbone = _random_backbone(spec)
    else:
        path = resolve_weights(str(weights or spec.url), sha256=sha256, cache_dir=cache_dir)
        backbone = load_dinov2_backbone(spec, path)
        logger.info("loaded teacher %s from %s", name, path)
        return Teacher(backbone, name=name, embed_dim=spec.vit.embed_dim, sha256=sha256_file(path))
    return Teacher(backbone, name=name, embed_dim=spec.vit.embed_dim)


def available_teachers() -> list[str]:
    return list(TEACHERS)


def load_dinov2_backbone(spec: TeacherSpec, path: Path) -> DinoV2ViT:
    """Build ``spec``'s architecture and load the state_dict file ``path`` into it (strictly)."""
    state_dict = _read_state_dict(path)
    config = _config_for(spec, state_dict, path)
    with torch.device("meta"):  # no memory or init time spent on weights that are overwritten at once
        model = DinoV2ViT(config)
    problems = _state_dict_problems(model, state_dict)
    if problems:
        raise WeightsError(_mismatch_message(spec, path, state_dict, problems))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def infer_teacher_name(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name in ``TEACHERS`` whose width, depth and FFN kind fit a DINOv2 state_dict, or None."""
    shape = _architecture_of(state_dict)
    for name, spec in TEACHERS.items():
        if (spec.vit.embed_dim, spec.vit.depth, spec.vit.ffn) == shape:
            return name
    return None


def _random_backbone(spec: TeacherSpec) -> DinoV2ViT:
    message = (
        f"Teacher {spec.name} uses RANDOM weights (weights='none'): its vectors are nearly identical for all "
        "images, so the distilled student learns nothing useful. Use this only for smoke tests and speed "
        "measurements; pass weights=None for the official checkpoint."
    )
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning(message)
    return DinoV2ViT(spec.vit).init_random_().eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types here (pickle, zip, runtime): all mean "unreadable"
        raise WeightsError(
            f"Cannot read {path} as a PyTorch state_dict ({type(e).__name__}: {e}). Pass a .pth file holding "
            "a plain state_dict in the official DINOv2 format (e.g. dinov2_vitb14_pretrain.pth)."
        ) from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        found = f"keys {list(state_dict)[:5]}" if isinstance(state_dict, dict) else type(state_dict).__name__
        raise WeightsError(
            f"{path} does not hold a plain state_dict (parameter name -> tensor) but {found}. If it is a "
            "training checkpoint, save its model's state_dict() to a file and pass that."
        )
    # fp16/bf16 exports would otherwise make the model run in that precision; autocast is the caller's choice.
    return {
        k: v.float() if v.is_floating_point() else v for k, v in state_dict.items() if k not in _IGNORED_KEYS
    }


def _config_for(spec: TeacherSpec, state_dict: dict[str, torch.Tensor], path: Path) -> ViTConfig:
    """``spec.vit`` with the position grid the file was trained at (37 x 37 for the official files)."""
    if "register_tokens" in state_dict:
        raise WeightsError(
            f"{path} is a DINOv2 checkpoint with registers (dinov2_*_reg4), which is not supported: use the "
            "checkpoint without registers (dinov2_vit*14_pretrain.pth)."
        )
    pos = state_dict.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return spec.vit  # the key check reports it
    grid = math.isqrt(pos.shape[1] - 1)
    return spec.vit.with_pos_grid(grid) if grid * grid == pos.shape[1] - 1 else spec.vit


def _state_dict_problems(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {expected[k]}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:2]}")
    return problems


def _mismatch_message(
    spec: TeacherSpec, path: Path, state_dict: dict[str, torch.Tensor], problems: list[str]
) -> str:
    guess = infer_teacher_name(state_dict)
    dim, depth, ffn = _architecture_of(state_dict)
    found = f"embed dim {dim}, depth {depth}, {ffn} FFN"
    if dim is None:
        hint = "It does not look like a DINOv2 checkpoint (it has no cls_token)."
    elif guess is not None and guess != spec.name:
        hint = f"It looks like a {guess} checkpoint ({found}): use teacher {guess}, or a {spec.name} file."
    else:
        hint = f"It has {found}, which fits none of {available_teachers()} in the official format."
    v = spec.vit
    return (
        f"Weights file {path} does not fit teacher {spec.name} (embed dim {v.embed_dim}, depth {v.depth}, "
        f"{v.ffn} FFN): {'; '.join(problems)}. {hint}"
    )


def _architecture_of(state_dict: dict[str, torch.Tensor]) -> tuple[int | None, int, str]:
    """(embed dim, depth, "mlp" | "swiglu") read from a DINOv2-format state_dict's keys and shapes."""
    cls = state_dict.get("cls_token")
    dim = int(cls.shape[-1]) if cls is not None else None
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    ffn = "swiglu" if any(".mlp.w12." in k for k in state_dict) else "mlp"
    return dim, len(blocks), ffn


def _load_torchscript_teacher(
    source: str, weights: str | None, sha256: str | None, cache_dir: str | Path | None
) -> Teacher:
    if not (is_remote(source) or to_local_path(source).is_file()):
        raise WeightsError(_unknown_teacher_message(source))
    if weights is not None:
        raise WeightsError(
            f"weights={weights!r} was given with the TorchScript teacher {source}: a TorchScript file carries "
            "its own weights; drop weights=, or name a dinov2/... teacher to load a state_dict."
        )
    path = resolve_weights(source, sha256=sha256, cache_dir=cache_dir)
    try:
        with warnings.catch_warnings():
            # torch marks TorchScript deprecated; loading a user's existing file is still what was asked for.
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning
            )
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # RuntimeError for most non-TorchScript files, others for odd archives
        raise WeightsError(
            f"{source} is neither a known teacher ({available_teachers()}) nor a TorchScript file "
            f"({type(e).__name__}). For a DINOv2 state_dict, name its architecture and pass the file as "
            f"weights, e.g. teacher={DEFAULT_TEACHER} teacher_weights={source}."
        ) from e
    module.eval()
    embed_dim = _probe_embed_dim(module, source)
    logger.info("loaded TorchScript teacher %s (%d-d) from %s", source, embed_dim, path)
    return Teacher(module, name=source, embed_dim=embed_dim, sha256=sha256_file(path))


def _probe_embed_dim(module: nn.Module, source: str, size: int = 224) -> int:
    """D from one forward pass on a (1, 3, 224, 224) zero image; the output must be (1, D)."""
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, 3, size, size))
        except Exception as e:
            raise WeightsError(
                f"TorchScript teacher {source} fails on a (1, 3, {size}, {size}) input: {e}"
            ) from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise WeightsError(
            f"TorchScript teacher {source} must map (B, 3, H, W) images to (B, D) vectors; "
            f"for a (1, 3, {size}, {size}) input it returned {got}."
        )
    return int(out.shape[1])


def _unknown_teacher_message(name: str) -> str:
    close = difflib.get_close_matches(name, available_teachers(), n=1)
    suggestion = f" Did you mean {close[0]}?" if close else ""
    return (
        f"Unknown teacher {name!r}.{suggestion} Valid names: {', '.join(available_teachers())}; or give the "
        "path, https:// URL or gs:// URI of a TorchScript file whose model maps (B, 3, H, W) images to "
        "(B, D) vectors."
    )
