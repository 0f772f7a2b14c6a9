"""Tests for kubedistill.data.images: every supported kind of file decodes to uint8 RGB (3, H, W)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from kubedistill.data.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_image,
    has_image_extension,
    read_image,
)
from kubedistill.errors import KubedistillError

H, W = 40, 60  # deliberately not square, so a rotation shows in the shape


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """(H, W, 3) uint8 with smooth content (JPEG keeps it close) and a bright corner marking orientation."""
    ys, xs = np.mgrid[0:H, 0:W]
    array = np.stack([xs * 4, ys * 6, (xs + ys) * 2], axis=2).astype(np.uint8)
    array[:8, :8] = 255
    return array


def save(tmp_path: Path, name: str, image: Image.Image, fmt: str, **kwargs: object) -> Path:
    path = tmp_path / name
    image.save(path, fmt, **kwargs)
    return path


def as_hwc(tensor: torch.Tensor) -> np.ndarray:
    assert tensor.dtype == torch.uint8 and tensor.ndim == 3 and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).numpy()


def with_orientation(image: Image.Image, orientation: int) -> Image.Exif:
    exif = image.getexif()
    exif[0x0112] = orientation
    return exif


# --- formats and colour modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,fmt,kwargs",
    [
        ("a.png", "PNG", {}),
        ("a.webp", "WEBP", {"lossless": True}),
        ("a.bmp", "BMP", {}),
        ("a.tif", "TIFF", {}),
        ("a.tiff", "TIFF", {"compression": "tiff_lzw"}),
    ],
)
def test_lossless_formats_decode_exactly(
    tmp_path: Path, rgb: np.ndarray, name: str, fmt: str, kwargs: dict
) -> None:
    path = save(tmp_path, name, Image.fromarray(rgb), fmt, **kwargs)
    np.testing.assert_array_equal(as_hwc(read_image(path)), rgb)


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "c.jpeg"])
def test_jpeg_decodes_close_to_the_original(tmp_path: Path, rgb: np.ndarray, name: str) -> None:
    path = save(tmp_path, name, Image.fromarray(rgb), "JPEG", quality=95)
    decoded = as_hwc(read_image(path)).astype(int)
    assert np.abs(decoded - rgb).mean() < 3


def test_png_content_with_jpg_extension_is_decoded_by_content(tmp_path: Path, rgb: np.ndarray) -> None:
    path = save(tmp_path, "really_a_png.jpg", Image.fromarray(rgb), "PNG")
    np.testing.assert_array_equal(as_hwc(read_image(path)), rgb)


def test_cmyk_jpeg_matches_pil(tmp_path: Path, rgb: np.ndarray) -> None:
    path = save(tmp_path, "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    reference = np.asarray(Image.open(path).convert("RGB")).astype(int)
    decoded = as_hwc(read_image(path)).astype(int)
    assert decoded.shape == (H, W, 3)
    assert np.abs(decoded - reference).max() <= 2
    assert np.abs(decoded - rgb).mean() < 4  # colours not inverted


def test_grayscale_png_gives_three_equal_channels(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[:, :, 1]
    decoded = as_hwc(read_image(save(tmp_path, "g.png", Image.fromarray(gray, "L"), "PNG")))
    for c in range(3):
        np.testing.assert_array_equal(decoded[:, :, c], gray)


def test_palette_png_matches_its_rgb_conversion(tmp_path: Path, rgb: np.ndarray) -> None:
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = save(tmp_path, "p.png", palette, "PNG")
    np.testing.assert_array_equal(as_hwc(read_image(path)), np.asarray(palette.convert("RGB")))


@pytest.mark.parametrize("name,fmt", [("deep.png", "PNG"), ("deep.tif", "TIFF")])
def test_16_bit_keeps_the_high_byte_on_both_decoders(tmp_path: Path, name: str, fmt: str) -> None:
    values = np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    decoded = as_hwc(read_image(save(tmp_path, name, image, fmt)))
    for c in range(3):
        np.testing.assert_array_equal(decoded[:, :, c], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    "name,fmt,kwargs",
    [("t.png", "PNG", {}), ("t.tif", "TIFF", {}), ("t.webp", "WEBP", {"lossless": True, "exact": True})],
)
def test_alpha_is_dropped_on_every_decoder(
    tmp_path: Path, rgb: np.ndarray, name: str, fmt: str, kwargs: dict
) -> None:
    alpha = np.zeros((H, W, 1), np.uint8)
    alpha[:, W // 2 :] = 255
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA")
    decoded = as_hwc(read_image(save(tmp_path, name, rgba, fmt, **kwargs)))
    np.testing.assert_array_equal(decoded, rgb)


# --- EXIF orientation ------------------------------------------------------------------------------------


def test_jpeg_exif_orientation_6_is_rotated(tmp_path: Path, rgb: np.ndarray) -> None:
    image = Image.fromarray(rgb)
    path = save(tmp_path, "phone.jpg", image, "JPEG", quality=95, exif=with_orientation(image, 6))
    decoded = read_image(path)
    assert decoded.shape == (3, W, H)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")).astype(int)
    assert np.abs(as_hwc(decoded).astype(int) - reference).max() <= 2


@pytest.mark.parametrize("fmt,kwargs", [("PNG", {}), ("WEBP", {"lossless": True})])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(
    tmp_path: Path, rgb: np.ndarray, fmt: str, kwargs: dict, orientation: int
) -> None:
    image = Image.fromarray(rgb)
    path = save(
        tmp_path,
        f"o{orientation}.{fmt.lower()}",
        image,
        fmt,
        exif=with_orientation(image, orientation),
        **kwargs,
    )
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(as_hwc(read_image(path)), reference)


# --- errors ----------------------------------------------------------------------------------------------


def test_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty") as info:
        read_image(path)
    assert info.value.source == str(path) and str(path) in str(info.value)
    assert isinstance(info.value, KubedistillError)


def test_random_bytes_are_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageDecodeError, match="not an image") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "name,fmt", [("cut.jpg", "JPEG"), ("cut.png", "PNG"), ("cut.bmp", "BMP"), ("cut.webp", "WEBP")]
)
def test_truncated_files_are_errors(tmp_path: Path, rgb: np.ndarray, name: str, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    assert str(path) in str(info.value) and info.value.reason


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read the file") as info:
        read_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR (with a correct CRC) claims width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


_BOMB_SCRIPT = """
import io, json, resource, sys
from PIL import Image
from kubedistill.data.images import ImageDecodeError, decode_image
sys.path.insert(0, sys.argv[1])
from test_images import png_claiming_size
warm = io.BytesIO()
Image.new("RGB", (64, 64)).save(warm, "PNG")
decode_image(warm.getvalue())  # the decoder's own first-use allocations are not the bomb's
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kinds = []
# 100000^2 trips PIL's own limit at open; 15000^2 (675 MB of RGB) passes PIL's and trips ours.
for side in (100_000, 15_000):
    try:
        decode_image(png_claiming_size(side, side), source="bomb.png")
        kinds.append("decoded")
    except ImageDecodeError as e:
        kinds.append(e.kind)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"kinds": kinds, "growth_kib": after - before}))
"""


def test_decompression_bomb_is_rejected_from_the_header_without_allocating() -> None:
    """Peak RSS of a fresh process barely moves while two bombs (30 GB and 675 MB of pixels) are rejected."""
    import json
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _BOMB_SCRIPT, str(Path(__file__).parent)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["kinds"] == ["decompression_bomb", "decompression_bomb"]
    assert result["growth_kib"] < 16 * 1024, result  # a decoded 15000^2 image alone would be 675 MB


_FUZZ_SCRIPT = """
import io, json, sys, warnings
import numpy as np
from PIL import Image
from kubedistill.data.images import ImageDecodeError, decode_image
warnings.filterwarnings("ignore")
rng = np.random.default_rng(0)
pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
counts = {}
for fmt in ("JPEG", "WEBP", "PNG", "BMP", "TIFF"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    base = buffer.getvalue()
    decoded = rejected = 0
    for _ in range(120):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):  # damage a few bytes past the signature
            data[int(rng.integers(8, len(data)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            image = decode_image(bytes(data))
            assert image.dtype.is_floating_point is False and image.shape[0] == 3
            decoded += 1
        except ImageDecodeError:
            rejected += 1
    counts[fmt] = [decoded, rejected]
print(json.dumps(counts))
"""


def test_damaged_files_never_crash_the_process() -> None:
    """Random byte damage and truncation in every format: each variant decodes or raises ImageDecodeError.

    Run in a child process because the failure this guards against is a crash (torchvision's libpng path
    segfaults on damaged PNG data), which would take pytest down with it.
    """
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _FUZZ_SCRIPT], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"decoder crashed (exit {run.returncode}): {run.stderr[-2000:]}"
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(counts) == {"JPEG", "WEBP", "PNG", "BMP", "TIFF"}
    assert all(sum(c) == 120 for c in counts.values())
    assert counts["PNG"][1] > 0 and counts["JPEG"][1] > 0  # the damage did break files


def test_max_pixels_is_configurable(rgb: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG")
    with pytest.raises(ImageDecodeError, match=f"{W}x{H} = {W * H} pixels"):
        decode_image(buffer.getvalue(), max_pixels=W * H - 1)
    assert decode_image(buffer.getvalue(), max_pixels=W * H).shape == (3, H, W)


def test_extensions_are_case_insensitive() -> None:
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    assert has_image_extension("/a/B.JPG") and has_image_extension("x.WebP") and has_image_extension("y.tif")
    assert (
        not has_image_extension("notes.txt")
        and not has_image_extension("jpg")
        and not has_image_extension("a.gif")
    )
