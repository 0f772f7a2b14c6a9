"""Image decoding: bytes -> uint8 RGB tensor (3, H, W), with EXIF orientation applied.

JPEG and WEBP go through ``torchvision.io.decode_image`` (libjpeg-turbo, libwebp; no PIL object and no numpy
copy). Every other format (PNG included: see ``_TORCHVISION_FORMATS``), and anything torchvision refuses, goes
through PIL. Both paths give
the same result for the same file:

- colour: grayscale, palette, CMYK and YCbCr become RGB;
- alpha is dropped, not composited: a transparent pixel keeps the colour stored under it, which is what
  torchvision's RGB mode does, so the two paths agree;
- 16-bit samples keep their 8 most significant bits (value >> 8);
- multi-frame files (animated WEBP, multi-page TIFF) give their first frame.

Before any pixel is decoded, the header's width x height is checked against ``max_pixels``, so a small file
that claims a huge image (a decompression bomb) is rejected in microseconds instead of exhausting memory.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode
from torchvision.io import decode_image as _tv_decode_image

from kubedistill.errors import KubedistillError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageDecodeError",
    "PROBLEM_KINDS",
    "decode_image",
    "decode_image_with_format",
    "has_image_extension",
    "read_file_bytes",
    "read_image",
]

# Lower-case, with the dot, as os.path.splitext returns them; compare with ``ext.lower()``.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

# Same default as PIL's warning threshold (about 179 megapixels, e.g. 13400 x 13400).
MAX_IMAGE_PIXELS: int = 178_956_970

# Why an image cannot be used, as ImageDecodeError.kind: one file, one kind.
PROBLEM_KINDS = ("empty", "not_an_image", "corrupt", "decompression_bomb", "unreadable")

# Formats torchvision decodes (names as PIL reports them). Not PNG: torchvision 0.29's decode_png crashes the
# whole process (SIGSEGV after "libpng error: IDAT: incorrect data check") on a PNG whose compressed data is
# damaged, and one such file would kill a DataLoader worker or the validator. PIL decodes PNG as fast (zlib
# dominates) and raises a Python error. tests/data/test_images.py fuzzes the formats that stay here.
_TORCHVISION_FORMATS = frozenset({"JPEG", "WEBP"})
_EXIF_ORIENTATION_TAG = 0x0112


class ImageDecodeError(KubedistillError):
    """An image cannot be read or decoded. ``source`` is the file (or URI), ``reason`` a one-line cause and
    ``kind`` one of ``PROBLEM_KINDS`` (what `kubedistill validate` groups its report by)."""

    def __init__(self, source: str, reason: str, kind: str = "corrupt"):
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; expected one of {PROBLEM_KINDS}")
        self.source = source
        self.reason = reason
        self.kind = kind
        super().__init__(
            f"{source}: {reason}. Replace or remove this file (`kubedistill validate` lists every such file)."
        )


def has_image_extension(path: str) -> bool:
    """Whether ``path`` ends with one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Read a local image file and decode it; see ``decode_image``.

    Returns:
        uint8 tensor (3, H, W), RGB.

    Raises:
        ImageDecodeError: the file cannot be read (missing, permission) or decoded.
    """
    source = os.fspath(path)
    return decode_image(read_file_bytes(source), source=source, max_pixels=max_pixels)


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """A local file's content; ImageDecodeError ("unreadable") when it cannot be read (missing, permission)."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageDecodeError(source, f"cannot read the file ({e.strerror or e})", "unreadable") from e


def decode_image(data: bytes, *, source: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """Decode an encoded image to RGB with its EXIF orientation applied.

    Args:
        data: the encoded file content.
        source: the file name or URI, used in error messages only.
        max_pixels: images whose header claims more than this many pixels are rejected before decoding.
            PIL refuses headers above 2 x ``PIL.Image.MAX_IMAGE_PIXELS`` on its own (also reported as an
            ImageDecodeError): to accept larger images, raise that limit too.

    Returns:
        uint8 tensor (3, H, W), RGB, H and W after EXIF orientation: a view of the decoder's (H, W, 3) buffer
        (channels-last strides; call ``.contiguous()`` if a consumer needs it).

    Raises:
        ImageDecodeError: empty, truncated, corrupt, unsupported or too large.
    """
    return decode_image_with_format(data, source=source, max_pixels=max_pixels)[0]


def decode_image_with_format(
    data: bytes, *, source: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[torch.Tensor, str]:
    """``decode_image`` plus the format the content really has (as PIL names it: "JPEG", "PNG", ...),
    whatever the file's extension says."""
    if len(data) == 0:
        raise ImageDecodeError(source, "the file is empty (0 bytes)", "empty")
    with _known_warnings_silenced():
        header = _open_header(data, source)
        _check_size(header, source, max_pixels)
        image_format = header.format or "UNKNOWN"
        if _use_torchvision(header):
            try:
                return _decode_with_torchvision(data), image_format
            except RuntimeError:
                pass  # PIL below either decodes it (e.g. an unusual PNG variant) or gives a precise reason.
        return _decode_with_pil(header, source), image_format


@contextlib.contextmanager
def _known_warnings_silenced() -> Iterator[None]:
    """Hide two warnings that say nothing actionable, once per image otherwise.

    PIL's DecompressionBombWarning: our own limit is applied in _check_size. torchvision >= 0.29 flags its
    image decoders as deprecated in favour of TorchCodec; they still work and are the fast path here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
        yield


def _open_header(data: bytes, source: str) -> Image.Image:
    """Parse the header only (PIL is lazy); pixels are not decoded here."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(source, f"rejected as a possible decompression bomb ({e})", "decompression_bomb") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(source, "not an image in a recognised format", "not_an_image") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(source, f"unreadable image header ({e})") from e


def _check_size(header: Image.Image, source: str, max_pixels: int) -> None:
    width, height = header.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(source, f"the header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            source,
            f"{width}x{height} = {width * height} pixels is more than the limit of {max_pixels} "
            "(a possible decompression bomb; downscale the image if it is genuine)",
            "decompression_bomb",
        )


def _use_torchvision(header: Image.Image) -> bool:
    if header.format not in _TORCHVISION_FORMATS:
        return False
    # torchvision applies EXIF orientation for JPEG and PNG but not for WEBP: PIL handles rotated WEBPs.
    return header.format != "WEBP" or header.getexif().get(_EXIF_ORIENTATION_TAG, 1) == 1


def _decode_with_torchvision(data: bytes) -> torch.Tensor:
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    image = _tv_decode_image(encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    if image.ndim == 4:  # animated: (frames, 3, H, W)
        image = image[0]
    if image.dtype == torch.uint16:  # 16-bit PNG
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    # A (3, H, W) view of the decoder's (H, W, 3) buffer. Not made contiguous: that copy cost ~0.4 ms for a
    # 500x375 image (a quarter of the decode), and the transforms crop and resize from the view directly.
    return image


def _decode_with_pil(header: Image.Image, source: str) -> torch.Tensor:
    try:
        header.load()
        array = _pil_to_rgb_array(_exif_upright(header))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Truncated data shows up as OSError("image file is truncated ...") or EOFError.
        raise ImageDecodeError(source, f"corrupt or truncated image data ({e})") from e
    return torch.from_numpy(array).permute(2, 0, 1)  # a view, as in the torchvision path


def _exif_upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # malformed EXIF must not make a readable image unusable
        return image


def _pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8.

    Integer modes I;16* and I are read as 16-bit samples and scaled (>> 8) like the torchvision path; PIL's own
    convert('RGB') would clip them at 255 and turn most of the image white. Float mode F is clipped to [0, 255].
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image).astype(np.int64)
        gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image), 0.0, 255.0).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(image.convert("RGB"))  # a writable copy: torch warns about read-only arrays
