"""DINOv2 teachers: numerical parity with Meta's reference package, loading rules, errors, TorchScript."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from dinov2.models import vision_transformer as reference
from torch import nn

from kubedistill.errors import WeightsError
from kubedistill.models import teachers
from kubedistill.models.teachers import TEACHERS, infer_teacher_name, load_teacher
from kubedistill.models.vit import DinoV2ViT, ViTConfig, cls_only_block
from kubedistill.storage import sha256_file

# The hub models' settings: 518 px position grid, layer scale, plain (unchunked) block list.
REFERENCE_KWARGS = {"patch_size": 14, "img_size": 518, "init_values": 1.0, "block_chunks": 0}
REFERENCE_BUILDERS = {
    "dinov2/vits14": reference.vit_small,
    "dinov2/vitb14": reference.vit_base,
    "dinov2/vitl14": reference.vit_large,
    "dinov2/vitg14": lambda **kw: reference.vit_giant2(ffn_layer="swiglufused", **kw),
}
TOLERANCE = 1e-4


def _randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random values for every parameter, including those the reference initializes to constants (cls
    token ~0, layer scale 1, norms 1/0, biases 0), so a wrong use of any of them shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("pos_embed", "cls_token"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.9 + 0.1)
            else:  # linear/conv weights and all biases
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def _reference(name: str, seed: int = 0, **overrides) -> nn.Module:
    """The reference model with random weights; built on the meta device to skip its slow default init
    (drop_path_uniform avoids the reference's linspace(...).item(), which meta tensors cannot do)."""
    with torch.device("meta"):
        model = REFERENCE_BUILDERS[name](**{**REFERENCE_KWARGS, "drop_path_uniform": True, **overrides})
    return _randomize_(model.to_empty(device="cpu"), seed).eval()


def _reference_cls(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(images)["x_norm_clstoken"]


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def vits_reference(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = _reference("dinov2/vits14")
    path = tmp_path_factory.mktemp("weights") / "dinov2_vits14_test.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def vits_teacher(vits_reference) -> nn.Module:
    return load_teacher("dinov2/vits14", weights=str(vits_reference[1]))


@pytest.mark.parametrize("height,width,batch", [(224, 224, 2), (518, 518, 1), (126, 168, 1)])
def test_vits14_matches_reference(vits_reference, vits_teacher, height: int, width: int, batch: int) -> None:
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height + width))
    expected = _reference_cls(vits_reference[0], images)
    with torch.no_grad():
        got = vits_teacher(images)
    assert got.shape == (batch, 384) and got.dtype == torch.float32
    assert _max_abs(got, expected) < TOLERANCE, f"max-abs {_max_abs(got, expected):.2e} at {height}x{width}"
    assert not torch.allclose(got.norm(dim=-1), torch.ones(batch))  # not L2-normalized: the method does it


def test_size_not_multiple_of_14_uses_top_left_crop(vits_reference, vits_teacher) -> None:
    images = torch.randn(1, 3, 130, 145, generator=torch.Generator().manual_seed(1))
    expected = _reference_cls(vits_reference[0], images[:, :, :126, :140])
    with torch.no_grad():
        assert _max_abs(vits_teacher(images), expected) < TOLERANCE
    with pytest.raises(ValueError, match="at least 14 x 14"):
        vits_teacher(torch.zeros(1, 3, 10, 224))


def test_teacher_is_frozen_and_stays_in_eval(vits_teacher) -> None:
    assert vits_teacher.name == "dinov2/vits14" and vits_teacher.embed_dim == 384
    params = list(vits_teacher.parameters())
    assert sum(p.numel() for p in params) > 21e6 and not any(p.requires_grad for p in params)
    vits_teacher.train()
    assert not any(m.training for m in vits_teacher.modules())


def test_checkpoint_with_another_position_grid(tmp_path: Path) -> None:
    # A backbone trained at 224 px has a 16 x 16 table; the teacher adopts it instead of failing.
    model = _reference("dinov2/vits14", seed=3, img_size=224)
    path = tmp_path / "vits14_224.pth"
    torch.save(model.state_dict(), path)
    teacher = load_teacher("dinov2/vits14", weights=str(path))
    images = torch.randn(1, 3, 168, 168, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _max_abs(teacher(images), _reference_cls(model, images)) < TOLERANCE


def test_vitb14_matches_reference(tmp_path: Path) -> None:
    model = _reference("dinov2/vitb14", seed=1)
    path = tmp_path / "dinov2_vitb14_test.pth"
    torch.save(model.state_dict(), path)
    teacher = load_teacher("dinov2/vitb14", weights=str(path), sha256=sha256_file(path))
    images = torch.randn(1, 3, 126, 126, generator=torch.Generator().manual_seed(2))  # small: saves time
    with torch.no_grad():
        got = teacher(images)
    assert got.shape == (1, 768) and teacher.embed_dim == 768
    assert _max_abs(got, _reference_cls(model, images)) < TOLERANCE


@pytest.mark.parametrize("name", list(TEACHERS))
def test_reference_state_dict_layout_loads_strictly(name: str) -> None:
    """Every architecture against the reference's keys and shapes, on the meta device (ViT-g is 4.5 GB)."""
    with torch.device("meta"):
        ref_state = REFERENCE_BUILDERS[name](**REFERENCE_KWARGS, drop_path_uniform=True).state_dict()
        ours = DinoV2ViT(TEACHERS[name].vit)
    ref_state.pop("mask_token")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref_state.items()}
    ours.load_state_dict(ref_state, strict=True, assign=True)
    assert infer_teacher_name(ref_state) == name


def test_layer_norm_eps_matches_reference() -> None:
    # Too small an effect for the parity tolerance on random weights, so compared directly.
    with torch.device("meta"):
        ref = reference.vit_small(**REFERENCE_KWARGS, drop_path_uniform=True)
        ours = DinoV2ViT(TEACHERS["dinov2/vits14"].vit)

    def eps(model: nn.Module) -> dict[str, float]:
        return {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}

    assert eps(ours) == eps(ref) and len(eps(ours)) == 2 * 12 + 1


def test_swiglu_architecture_matches_reference() -> None:
    """ViT-g/14's SwiGLU blocks, numerically, on a model of the same kind small enough to run here."""
    kwargs = {"embed_dim": 64, "depth": 2, "num_heads": 4}
    with torch.device("meta"):
        ref = reference.DinoVisionTransformer(
            **REFERENCE_KWARGS, **kwargs, ffn_layer="swiglufused", drop_path_uniform=True
        )
    ref = _randomize_(ref.to_empty(device="cpu"), seed=5).eval()
    ours = DinoV2ViT(ViTConfig(**kwargs, ffn="swiglu"))
    state = ref.state_dict()
    state.pop("mask_token")
    ours.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _max_abs(ours.eval()(images), _reference_cls(ref, images)) < TOLERANCE


def test_official_urls_and_default_weights(vits_reference, monkeypatch) -> None:
    assert TEACHERS["dinov2/vitb14"].url == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
    )
    assert TEACHERS["dinov2/vitg14"].url.endswith("/dinov2_vitg14/dinov2_vitg14_pretrain.pth")
    asked = []

    def fake_resolve(source: str, *, sha256=None, cache_dir=None) -> Path:
        asked.append((source, sha256, cache_dir))
        return vits_reference[1]

    monkeypatch.setattr(teachers, "resolve_weights", fake_resolve)
    teacher = load_teacher("dinov2/vits14", sha256="ab" * 32, cache_dir="/c")
    assert asked == [(TEACHERS["dinov2/vits14"].url, "ab" * 32, "/c")] and teacher.embed_dim == 384


def test_random_weights_warn_loudly(caplog) -> None:
    with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="RANDOM weights"):
        teacher = load_teacher("dinov2/vits14", weights="none")
    assert any("smoke tests and speed" in r.getMessage() for r in caplog.records)
    backbone = teacher.backbone
    assert all(
        torch.equal(p, torch.ones_like(p)) for n, p in backbone.named_parameters() if n.endswith("gamma")
    )
    assert 0.015 < backbone.pos_embed.std().item() < 0.025
    with torch.no_grad():
        assert teacher(torch.randn(2, 3, 56, 56)).shape == (2, 384)


def test_wrong_size_checkpoint_names_the_teacher_it_fits(vits_reference) -> None:
    with pytest.raises(WeightsError, match=r"does not fit teacher dinov2/vitb14.*looks like a dinov2/vits14"):
        load_teacher("dinov2/vitb14", weights=str(vits_reference[1]))


def test_sha256_of_local_weights_is_checked(vits_reference) -> None:
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_teacher("dinov2/vits14", weights=str(vits_reference[1]), sha256="0" * 64)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"not a checkpoint", "Cannot read .* as a PyTorch state_dict"),
        ({"cls_token": torch.zeros(1, 1, 384), "register_tokens": torch.zeros(1, 4, 384)}, "with registers"),
        ({"fc.weight": torch.zeros(2, 2)}, "does not look like a DINOv2 checkpoint"),
        ({"epoch": 3}, r"does not hold a plain state_dict .* but keys \['epoch'\]"),
    ],
)
def test_unusable_weights_files(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        load_teacher("dinov2/vits14", weights=str(path))


def test_unknown_name_lists_valid_names_and_torchscript() -> None:
    with pytest.raises(WeightsError, match="Did you mean dinov2/vitb14") as info:
        load_teacher("dinov2/vitb16")
    assert all(name in str(info.value) for name in TEACHERS) and "TorchScript" in str(info.value)


class _TinyEncoder(nn.Module):
    """(B, 3, H, W) -> (B, 5); batch norm makes eval mode observable."""

    def __init__(self, pooled: bool = True):
        super().__init__()
        self.pooled = pooled
        self.conv = nn.Conv2d(3, 5, kernel_size=3)
        self.bn = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y.mean(dim=(2, 3)) if self.pooled else y


def _save_torchscript(module: nn.Module, path: Path) -> Path:
    with torch.no_grad():
        module.bn.running_mean.fill_(0.3)  # eval-mode output differs from train-mode output
    with pytest.warns(FutureWarning):  # torch marks TorchScript deprecated; users still have such files
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def test_torchscript_teacher(tmp_path: Path) -> None:
    module = _TinyEncoder()
    path = _save_torchscript(module, tmp_path / "encoder.pt")
    teacher = load_teacher(str(path))
    assert teacher.name == str(path) and teacher.embed_dim == 5
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(teacher(images), module(images), atol=1e-6)


def test_torchscript_teacher_errors(tmp_path: Path, vits_reference) -> None:
    spatial = _save_torchscript(_TinyEncoder(pooled=False), tmp_path / "spatial.pt")
    with pytest.raises(WeightsError, match=r"must map \(B, 3, H, W\) images to \(B, D\).*\(1, 5, 222, 222\)"):
        load_teacher(str(spatial))
    with pytest.raises(WeightsError, match="neither a known teacher .* nor a TorchScript file"):
        load_teacher(str(vits_reference[1]))
    with pytest.raises(WeightsError, match="carries its own weights"):
        load_teacher(str(spatial), weights=str(vits_reference[1]))


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_cls_only_last_block_equals_the_full_block(ffn: str) -> None:
    """The forward pass computes its last block for the CLS token alone; that must equal the full block."""
    model = _randomize_(DinoV2ViT(ViTConfig(embed_dim=96, depth=2, num_heads=3, ffn=ffn, pos_grid=4)), seed=3).eval()
    tokens = torch.randn(3, 17, 96)
    block = model.blocks[-1]
    with torch.no_grad():
        expected = block(tokens)[:, 0]
        got = cls_only_block(block, tokens)
    assert got.shape == (3, 96)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
