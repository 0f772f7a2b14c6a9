"""Tests for kubedistill.data.dali: the DALI path against the torch path (ImageDataset + DataLoader).

DALI runs its CPU operators here (no GPU needed). The same (epoch, index) keys must give the same views
(crop boxes, flips, every drawn factor), the same substitutes for bad files, and the same batches after a
resume. Pixels are compared with tolerances, in normalized units (one uint8 level is about 0.017):

- without colour jitter, only the resize kernels differ at the crop's edge (DALI's filter reads the pixels
  just outside the crop box, torchvision's stops at it) plus rounding (torch rounds to uint8 after each op,
  DALI stays in float32): measured per-image mean and std gaps under 0.012, correlation above 0.999; the
  tests allow 0.05 and 0.95;
- with the default augmentations, the colour jitter is exact but for clipping: torch clips to [0, 255]
  after each op, DALI once at the end. These test images are saturated random colours, so brightness or
  contrast of 1.4 pushes many pixels out of range: measured worst per-image mean gap 0.14, std gap 0.31 and
  correlation 0.978 over six epochs (0.10, 0.11 and 0.985 for the epoch tested); the tests allow 0.2, 0.2
  and 0.97, and a median correlation above 0.995.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from kubedistill.data.dali import (
    DaliLoader,
    _jitter_terms,
    dali_available,
    oriented_size,
    resolve_backend,
)
from kubedistill.data.datasets import ImageDataset, make_dataloader
from kubedistill.data.images import ImageDecodeError, decode_image
from kubedistill.data.remote import ImageReader
from kubedistill.data.transforms import (
    ColorJitterArgs,
    DistillationTransform,
    DistillationTransformArgs,
    GaussianBlurArgs,
    RandomFlipArgs,
    RandomResizeArgs,
    RandomRotationArgs,
    SolarizeArgs,
    ViewParams,
)
from kubedistill.errors import ConfigError, DataError

from ..conftest import write_images

BATCH = 4
SEED = 3
# No jitter, grayscale or blur: only the crop, resize and flips differ, at the crop's edge and in rounding.
GEOMETRY_ONLY = DistillationTransformArgs(
    image_size=(32, 32),
    color_jitter=ColorJitterArgs(prob=0.0),
    random_gray_scale=0.0,
    gaussian_blur=GaussianBlurArgs(prob=0.0),
)
# The default augmentations (at 32x32).
DEFAULTS = DistillationTransformArgs(image_size=(32, 32))
TORCHVISION_JITTER = {
    "brightness": F.adjust_brightness,
    "contrast": F.adjust_contrast,
    "saturation": F.adjust_saturation,
    "hue": F.adjust_hue,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The torch path runs single-threaded, as in a DataLoader worker (two are slower on 2 busy CPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """16 images of 64-79 x 80-95 pixels, JPEG and PNG (every third one)."""
    folder = tmp_path_factory.mktemp("dali_images")
    return sorted(str(p) for p in write_images(folder, 16, size=(64, 80)))


class RecordingTransform(DistillationTransform):
    """The torch path's transform, keeping each view's ViewParams in the order drawn."""

    def __init__(self, args: DistillationTransformArgs):
        super().__init__(args)
        self.params: list[ViewParams] = []

    def sample(self, height: int, width: int) -> ViewParams:
        params = super().sample(height, width)
        self.params.append(params)
        return params


def torch_epoch(
    files: list[str], args: DistillationTransformArgs, epoch: int
) -> tuple[list[dict], list[ViewParams]]:
    transform = RecordingTransform(args)
    loader = make_dataloader(
        dataset=ImageDataset(files, transform, seed=SEED),
        batch_size=BATCH,
        num_workers=0,
        shuffle=True,
        seed=SEED,
    )
    loader.sampler.set_epoch(epoch)
    return list(loader), transform.params


def dali_loader(files: list[str], args: DistillationTransformArgs, **kwargs: Any) -> DaliLoader:
    return DaliLoader(
        files,
        DistillationTransform(args),
        batch_size=BATCH,
        seed=SEED,
        num_threads=2,
        keep_params=True,
        **kwargs,
    )


def dali_epoch(
    files: list[str], args: DistillationTransformArgs, epoch: int, start: int = 0, **kwargs: Any
) -> list[dict]:
    loader = dali_loader(files, args, **kwargs)
    loader.sampler.set_epoch(epoch, start=start)
    try:
        return list(loader)
    finally:
        loader.close()


def images_of(batches: list[dict]) -> torch.Tensor:
    return torch.cat([b["image"] for b in batches])


def per_image_stats(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float, float]:
    """Largest per-image, per-channel |mean difference| and |std difference|, and the smallest per-image
    correlation, in normalized units."""
    mean_gap = (ours.mean(dim=(2, 3)) - theirs.mean(dim=(2, 3))).abs().max().item()
    std_gap = (ours.std(dim=(2, 3)) - theirs.std(dim=(2, 3))).abs().max().item()
    correlation = min(np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(ours, theirs, strict=True))
    return mean_gap, std_gap, correlation


# --- same views, close pixels -------------------------------------------------------------------------------


def test_geometry_matches_the_torch_path(files: list[str]) -> None:
    theirs, their_params = torch_epoch(files, GEOMETRY_ONLY, epoch=1)
    ours = dali_epoch(files, GEOMETRY_ONLY, epoch=1)
    assert [p for b in ours for p in b["params"]] == their_params
    assert any(p.horizontal_flip for p in their_params) and not all(p.horizontal_flip for p in their_params)
    assert torch.equal(torch.cat([b["index"] for b in ours]), torch.cat([b["index"] for b in theirs]))
    image = images_of(ours)
    assert image.shape == (16, 3, 32, 32) and image.dtype == torch.float32
    # Only edge pixels and rounding differ: under 0.012 measured (one uint8 level is 0.017).
    mean_gap, std_gap, correlation = per_image_stats(image, images_of(theirs))
    assert mean_gap < 0.05 and std_gap < 0.05 and correlation > 0.95, (mean_gap, std_gap, correlation)


def test_default_augmentations_draw_the_same_views_and_close_pixels(files: list[str]) -> None:
    theirs, their_params = torch_epoch(files, DEFAULTS, epoch=2)
    ours = dali_epoch(files, DEFAULTS, epoch=2)
    assert [p for b in ours for p in b["params"]] == their_params
    assert any(p.jitter for p in their_params) and any(p.grayscale for p in their_params)
    # Looser: torch clips after each jitter op, DALI once (see the module docstring).
    mine, reference = images_of(ours), images_of(theirs)
    mean_gap, std_gap, correlation = per_image_stats(mine, reference)
    assert mean_gap < 0.2 and std_gap < 0.2 and correlation > 0.97, (mean_gap, std_gap, correlation)
    median = np.median(
        [np.corrcoef(a.flatten(), b.flatten())[0, 1] for a, b in zip(mine, reference, strict=True)]
    )
    assert median > 0.995


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["brightness", "contrast", "saturation", "hue"]))
)
def test_jitter_formula_is_torchvision_in_any_order(order: tuple[str, ...]) -> None:
    """Away from clipping, the formula DALI evaluates equals torchvision's ops applied in the view's order."""
    factors = {"brightness": 1.15, "contrast": 0.8, "saturation": 1.3, "hue": -0.13}
    image = 90 + 80 * torch.rand((3, 16, 16), generator=torch.Generator().manual_seed(0))  # stays in range
    expected = image / 255
    for name in order:
        expected = TORCHVISION_JITTER[name](expected, factors[name])
    assert expected.min() > 0 and expected.max() < 1  # no clipping: the formula must be exact
    terms = _jitter_terms(tuple((name, factors[name]) for name in order))
    hued = F.adjust_hue(image / 255, factors["hue"]) * 255
    luma, hued_luma = F.rgb_to_grayscale(image), F.rgb_to_grayscale(hued)
    formula = (
        terms["p"] * hued
        + terms["u"] * luma
        + terms["v"] * hued_luma
        + terms["w0"] * luma.mean()
        + terms["w1"] * hued_luma.mean()
    )
    assert torch.allclose(formula, expected * 255, atol=0.01)


def test_rotation_blur_and_solarize_follow_the_torch_path(files: list[str]) -> None:
    args = DistillationTransformArgs(
        image_size=(32, 32),
        color_jitter=ColorJitterArgs(prob=0.0),
        random_gray_scale=0.0,
        random_rotation=RandomRotationArgs(prob=1.0, degrees=30.0),
        gaussian_blur=GaussianBlurArgs(prob=1.0, sigmas=(0.5, 1.0)),
        solarize=SolarizeArgs(prob=0.5, threshold=0.5),
    )
    theirs, their_params = torch_epoch(files[:8], args, epoch=0)
    ours = dali_epoch(files[:8], args, epoch=0)
    assert [p for b in ours for p in b["params"]] == their_params
    assert all(p.rotation and p.blur for p in their_params) and any(p.solarize for p in their_params)
    # Same definitions (bilinear, black fill, counter-clockwise; reflected border): under 0.005 measured.
    mean_gap, std_gap, correlation = per_image_stats(images_of(ours), images_of(theirs))
    assert mean_gap < 0.05 and std_gap < 0.05 and correlation > 0.95, (mean_gap, std_gap, correlation)


# --- formats and orientation --------------------------------------------------------------------------------


def test_png_and_jpeg_both_decode(files: list[str]) -> None:
    assert {Path(f).suffix for f in files} == {".jpg", ".PNG"}
    loader = dali_loader(files, GEOMETRY_ONLY)
    batches = list(loader)
    loader.close()
    used = {Path(files[i]).suffix for b in batches for i in b["index"].tolist()}
    assert used == {".jpg", ".PNG"} and all(b["failures"] == [] for b in batches)


def quadrants(height: int, width: int) -> np.ndarray:
    """Four flat colours, one per quadrant: any rotation or mirror of it is obvious."""
    array = np.zeros((height, width, 3), np.uint8)
    array[: height // 2, : width // 2] = (220, 30, 30)
    array[: height // 2, width // 2 :] = (30, 220, 30)
    array[height // 2 :, : width // 2] = (30, 30, 220)
    array[height // 2 :, width // 2 :] = (220, 220, 30)
    return array


@pytest.mark.parametrize(("image_format", "orientation"), [("JPEG", 6), ("JPEG", 3), ("PNG", 6), ("TIFF", 8)])
def test_exif_rotated_image_is_oriented_like_our_decoder(
    tmp_path: Path, image_format: str, orientation: int
) -> None:
    path = tmp_path / f"rotated.{image_format.lower()}"
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: shown rotated 90 degrees clockwise; 3: upside down; 8: 90 anticlockwise
    Image.fromarray(quadrants(48, 64)).save(path, image_format, exif=exif)
    data = path.read_bytes()
    assert oriented_size(data) == tuple(decode_image(data).shape[-2:])
    args = DistillationTransformArgs(
        image_size=tuple(decode_image(data).shape[-2:]),
        random_resize=RandomResizeArgs(1.0, 1.0),
        random_flip=RandomFlipArgs(0.0, 0.0),
        color_jitter=ColorJitterArgs(prob=0.0),
        random_gray_scale=0.0,
        gaussian_blur=GaussianBlurArgs(prob=0.0),
    )
    files = [str(path)] * BATCH
    (ours,) = dali_epoch(files, args, epoch=0)
    (theirs,), _ = torch_epoch(files, args, epoch=0)
    # A wrong orientation moves every quadrant: the images would differ by about 1 normalized unit.
    assert (ours["image"] - theirs["image"]).abs().mean() < 0.05


# --- unreadable files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_with_bad(files: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The images, with one file that is not an image at all (caught from its header, before DALI) and one
    JPEG whose header is good and whose data is cut off (DALI fails the batch; the CPU decoder finds it)."""
    folder = tmp_path_factory.mktemp("dali_bad")
    garbage = folder / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    truncated = folder / "truncated.jpg"
    jpeg = Path(next(f for f in files if f.endswith(".jpg"))).read_bytes()
    truncated.write_bytes(jpeg[: len(jpeg) * 6 // 10])
    return [*files[:5], str(garbage), *files[5:10], str(truncated), *files[10:]]


def test_unreadable_files_are_substituted_and_reported_like_the_torch_path(
    files_with_bad: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    theirs, _ = torch_epoch(files_with_bad, GEOMETRY_ONLY, epoch=0)
    with caplog.at_level(logging.INFO, logger="kubedistill.data.dali"):
        ours = dali_epoch(files_with_bad, GEOMETRY_ONLY, epoch=0)
    # The truncated JPEG went through DALI, failed its batch, and was found by the CPU decoder.
    assert "DALI could not decode a file of this batch" in caplog.text
    their_failures = [f for b in theirs for f in b["failures"]]
    assert {Path(path).name for path, _ in their_failures} == {"garbage.jpg", "truncated.jpg"}
    assert [f for b in ours for f in b["failures"]] == their_failures
    assert torch.equal(torch.cat([b["index"] for b in ours]), torch.cat([b["index"] for b in theirs]))
    mean_gap, std_gap, correlation = per_image_stats(images_of(ours), images_of(theirs))
    assert mean_gap < 0.05 and std_gap < 0.05 and correlation > 0.95, (mean_gap, std_gap, correlation)


def test_gives_up_after_max_retries(tmp_path: Path) -> None:
    bad = []
    for i in range(BATCH):
        (tmp_path / f"bad{i}.png").write_bytes(b"")
        bad.append(str(tmp_path / f"bad{i}.png"))
    loader = DaliLoader(bad, DistillationTransform(GEOMETRY_ONLY), batch_size=BATCH, max_retries=2)
    with pytest.raises(DataError, match="2 substitutes could not be decoded"):
        next(iter(loader))
    loader.close()


def test_missing_file_is_reported_like_image_reader(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read the file") as info:
        ImageReader().read_bytes(str(tmp_path / "gone.jpg"))
    assert info.value.kind == "unreadable"


# --- resume and length --------------------------------------------------------------------------------------


def test_resume_mid_epoch_gives_the_remaining_batches_of_an_uninterrupted_run(files: list[str]) -> None:
    full = dali_epoch(files, DEFAULTS, epoch=5)
    read: list[str] = []

    def counting_reader(uri: str) -> bytes:
        read.append(uri)
        return ImageReader().read_bytes(uri)

    resumed = dali_epoch(files, DEFAULTS, epoch=5, start=2 * BATCH, read_bytes=counting_reader)
    assert len(full) == 4 and len(resumed) == 2
    for a, b in zip(full[2:], resumed, strict=True):
        assert torch.equal(a["index"], b["index"]) and a["params"] == b["params"]
        assert torch.allclose(a["image"], b["image"], atol=1e-6)
    # The skipped half of the epoch was not even read.
    assert sorted(read) == sorted(files[i] for b in resumed for i in b["index"].tolist())


def test_length_and_shards_match_the_torch_loader(files: list[str]) -> None:
    for rank in (0, 1):
        ours = DaliLoader(
            files[:15], DistillationTransform(GEOMETRY_ONLY), batch_size=3, rank=rank, world_size=2
        )
        theirs = make_dataloader(
            dataset=ImageDataset(files[:15], DistillationTransform(GEOMETRY_ONLY)),
            batch_size=3,
            num_workers=0,
            shuffle=True,
            seed=0,
            rank=rank,
            world_size=2,
        )
        assert len(ours) == len(theirs) == 2  # 7 items per rank, the incomplete batch dropped
        ours.sampler.set_epoch(1)
        theirs.sampler.set_epoch(1)
        assert list(ours.sampler) == list(theirs.sampler)
        ours.close()


# --- optional dependency ------------------------------------------------------------------------------------


def test_dali_is_available_here_and_auto_picks_it_on_cuda_only() -> None:
    assert dali_available()
    assert resolve_backend("auto", torch.device("cuda", 0)) == "dali"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("dali", torch.device("cpu")) == "dali"
    with pytest.raises(ConfigError, match="loader_args.backend"):
        resolve_backend("nvjpeg", torch.device("cpu"))


def test_without_dali_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nvidia.dali.fn", None)  # makes `import nvidia.dali.fn` fail
    assert not dali_available()
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    with pytest.raises(ConfigError, match=r"pip install kubedistill\[gpu\]"):
        DaliLoader(["a.jpg"], DistillationTransform(), batch_size=1)


# --- on a GPU -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG and DALI's GPU operators)"
)
def test_cuda_batches_match_the_cpu_pipeline(files: list[str]) -> None:
    on_cpu = dali_epoch(files, DEFAULTS, epoch=1)
    loader = dali_loader(files, DEFAULTS, device="cuda")
    loader.sampler.set_epoch(1)
    on_gpu = list(loader)
    loader.close()
    assert on_gpu[0]["image"].device.type == "cuda"
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert torch.equal(a["index"], b["index"]) and a["params"] == b["params"]
    # nvJPEG's IDCT differs from libjpeg-turbo's by about a level; the ops are the same definitions.
    mean_gap, std_gap, correlation = per_image_stats(images_of(on_gpu).cpu(), images_of(on_cpu))
    assert mean_gap < 0.02 and std_gap < 0.02 and correlation > 0.99, (mean_gap, std_gap, correlation)


def _jpeg_variants() -> dict[str, bytes]:
    """JPEGs whose headers differ the ways real ones do, each with the size PIL reads for it."""
    import io
    import struct

    rng = np.random.default_rng(3)
    image = Image.fromarray((rng.random((30, 50, 3)) * 255).astype(np.uint8))

    def save(img: Image.Image, **kwargs: Any) -> bytes:
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", **kwargs)
        return buffer.getvalue()

    variants = {"plain": save(image), "progressive": save(image, progressive=True), "gray": save(image.convert("L")),
                "cmyk": save(image.convert("CMYK")), "optimized": save(image, optimize=True)}  # fmt: skip
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        variants[f"exif-{orientation}"] = save(image, exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x010F] = "a camera maker, no orientation"
    variants["exif-without-orientation"] = save(image, exif=exif.tobytes())
    plain = variants["plain"]

    def with_segment(marker: int, payload: bytes, data: bytes = plain) -> bytes:  # right after SOI
        return data[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + data[2:]

    big_endian = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00" * 4
    variants["exif-big-endian-6"] = with_segment(0xE1, b"Exif\x00\x00" + big_endian)
    variants["exif-malformed"] = with_segment(0xE1, b"Exif\x00\x00" + b"XX" + b"\x00" * 20)
    variants["xmp-orientation-6"] = with_segment(
        0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    )
    start_of_frame = plain.index(b"\xff\xc0")
    variants["exif-after-the-frame-header"] = (
        plain[:start_of_frame] + struct.pack(">BBH", 0xFF, 0xE1, len(big_endian) + 8) + b"Exif\x00\x00" + big_endian
        + plain[start_of_frame:]
    )  # fmt: skip
    variants["fill-bytes"] = plain[:2] + b"\xff\xff" + plain[2:]
    variants["body-truncated"] = plain[: len(plain) * 2 // 3]
    variants["header-truncated"] = plain[: start_of_frame + 6]
    variants["zero-height"] = plain[: start_of_frame + 5] + b"\x00\x00" + plain[start_of_frame + 7 :]
    variants["soi-then-garbage"] = b"\xff\xd8" + b"garbage" * 10
    return variants


def test_the_jpeg_header_fast_path_reads_what_pil_reads(corpus):
    """The DALI loader reads each image's size from its header in the training process: a marker walk for JPEGs
    (~1 us) must give PIL's answer, or hand over to PIL (same size, or same error and reason)."""
    from kubedistill.data.dali import _jpeg_oriented_size, _pil_oriented_size

    cases = {**_jpeg_variants(), **{rel: data for rel, data in corpus.files.items() if data}}
    fast_taken = set()
    for name, data in cases.items():
        try:
            expected: Any = _pil_oriented_size(data, source=name, max_pixels=10**8)
        except ImageDecodeError as error:
            expected = (error.kind, error.reason)
        try:
            got: Any = oriented_size(data, source=name, max_pixels=10**8)
        except ImageDecodeError as error:
            got = (error.kind, error.reason)
        assert got == expected, name
        if _jpeg_oriented_size(data) is not None:
            fast_taken.add(name)
    # The marker walk answers for ordinary JPEGs (else this test would pass with the fast path never taken) ...
    assert {"plain", "progressive", "gray", "cmyk", "optimized", "exif-big-endian-6", "exif-after-the-frame-header",
            "exif-without-orientation", "fill-bytes", "body-truncated", "dogs/exif_rotated.jpg"} <= fast_taken  # fmt: skip
    assert {f"exif-{o}" for o in range(1, 9)} <= fast_taken
    # ... and leaves to PIL what it cannot vouch for.
    assert not fast_taken & {"xmp-orientation-6", "exif-malformed", "header-truncated", "soi-then-garbage",
                             "dogs/really_a_png.jpg", "cats/notes_in_disguise.jpg"}  # fmt: skip
    assert oriented_size(cases["exif-big-endian-6"]) == (50, 30)  # 30x50 stored, shown rotated
    assert oriented_size(cases["exif-after-the-frame-header"]) == (50, 30)
