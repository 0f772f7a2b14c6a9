"""Shared fixtures: small real image folders made on the fly."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The smallest real training run: resnet18 student, a random vits14 teacher, 28 px, batch 8, on the CPU.
TINY_RUN = {
    "model": "torchvision/resnet18",
    "method_args": {"teacher": "dinov2/vits14", "teacher_weights": "none"},
    "transform_args": {"image_size": [28, 28]},
    "batch_size": 8,
    "num_workers": 0,
    "accelerator": "cpu",
}


# Tests of the bf16 path itself (channels-last bf16 students, bf16 exports, compiled bf16 graphs) run where bf16 is
# native. Where it is emulated (an AVX2-only CPU, or `make test CPU=avx2` here) precision=auto never picks bf16,
# and those tests would only time the emulation (~8x slower than fp32); the fp32 path is what runs there.
def _native_bf16() -> bool:
    from kubedistill.training.precision import cpu_has_fast_bf16

    return cpu_has_fast_bf16()


native_bf16 = pytest.mark.skipif(
    not _native_bf16(),
    reason="bf16 is emulated on this CPU (no AVX512-BF16 or AMX, or ONEDNN_MAX_CPU_ISA caps it): precision=auto "
    "runs fp32 here, and the fp32 path is tested",
)
# What `make test CPU=avx2` sets: oneDNN and ATen kernels capped at AVX2, as on a CPU without AVX-512.
AVX2_ONLY_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def write_images(folder: Path, count: int, *, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Path]:
    """``count`` JPEG/PNG images of varied content and sizes under ``folder`` (two subfolders)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height, width = size[0] + int(rng.integers(0, 16)), size[1] + int(rng.integers(0, 16))
        # Smooth random blobs rather than pure noise, so images differ in structure.
        base = rng.random((4, 4, 3))
        pixels = np.kron(base, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
        array = (pixels * 255).astype(np.uint8)
        path = folder / f"part{i % 2}" / (f"img{i:03d}.jpg" if i % 3 else f"img{i:03d}.PNG")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 64)
    return folder


# --- a real MLflow server -----------------------------------------------------------------------------------------

MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
              "MLFLOW_REGISTRY_URI", "KFP_MLFLOW_CONFIG")  # fmt: skip


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one real ``mlflow server`` (sqlite store, proxied local artifacts) for the whole test session."""
    from kubedistill.devtools.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch):
    # A developer's MLFLOW_* settings must not leak into the tests (nor the tests' into each other).
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _own_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # The staging folders of gs:// runs and cached weights go below the test's own folder (removed when it
    # passes), never into the developer's ~/.cache/kubedistill.
    monkeypatch.setenv("KUBEDISTILL_CACHE_DIR", str(tmp_path / "kubedistill-cache"))


@pytest.fixture(autouse=True)
def _quiet_random_teacher_warning():
    # Tests use random teachers on purpose; the warning itself is tested in tests/models.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        yield


# --- a corpus with every problem kind and every unusual-but-valid kind --------------------------------------------


def _encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A small PNG whose IHDR (with a correct CRC) claims width x height."""
    data = bytearray(_encoded(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF)
    return bytes(data)


def _damaged_png(pixels: np.ndarray) -> bytes:
    """A PNG whose compressed pixel data is damaged (with the chunk CRC fixed up, so only zlib notices)."""
    data = bytearray(_encoded(Image.fromarray(pixels), "PNG"))
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    for offset in range(length // 3, length // 3 + 8):
        data[start + 4 + offset] ^= 0x5A
    crc = zlib.crc32(bytes(data[start : start + 4 + length])) & 0xFFFFFFFF
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", crc)
    return bytes(data)


@dataclass
class Corpus:
    """A generated dataset: ``files`` maps each relative path to its bytes (None: a dangling symlink) and
    ``expected`` maps it to where validation must put it: "ok", a problem kind, or a skip reason."""

    files: dict[str, bytes | None]
    expected: dict[str, str]
    sizes: dict[str, tuple[int, int]]  # good images: (width, height) after EXIF orientation
    formats: dict[str, str]  # good images: the content's format

    def write(self, root: Path) -> Path:
        for rel, data in self.files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if data is None:
                path.symlink_to(root / "gone" / "missing.jpg")
            else:
                path.write_bytes(data)
        return root

    def upload(self, bucket, prefix: str) -> None:  # bucket: google.cloud.storage.Bucket
        for rel, data in self.files.items():
            if data is not None:  # object stores have no symlinks
                bucket.blob(f"{prefix}/{rel}").upload_from_string(data)

    def by_kind(self, *, remote: bool = False) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for rel, kind in self.expected.items():
            if remote and self.files[rel] is None:
                continue
            found.setdefault(kind, set()).add(rel)
        return found


def make_corpus(normal_per_class: int = 12, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    files: dict[str, bytes | None] = {}
    expected: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    formats: dict[str, str] = {}

    def pixels(h: int = 48, w: int = 64) -> np.ndarray:
        base = rng.random((4, 4, 3))
        return (np.kron(base, np.ones((h // 4 + 1, w // 4 + 1, 1)))[:h, :w] * 255).astype(np.uint8)

    def good(rel: str, data: bytes, size: tuple[int, int], fmt: str) -> None:
        files[rel], expected[rel], sizes[rel], formats[rel] = data, "ok", size, fmt

    for label in ("cats", "dogs"):
        for i in range(normal_per_class):
            good(f"{label}/{label}_{i:03d}.jpg", _encoded(Image.fromarray(pixels()), "JPEG", quality=90), (64, 48), "JPEG")
    # Unusual but valid: converted at load time.
    good("cats/cmyk.jpg", _encoded(Image.fromarray(pixels()).convert("CMYK"), "JPEG"), (64, 48), "JPEG")
    good("cats/gray.png", _encoded(Image.fromarray(pixels()).convert("L"), "PNG"), (64, 48), "PNG")
    good("cats/palette.png", _encoded(Image.fromarray(pixels()).convert("P"), "PNG"), (64, 48), "PNG")
    deep = (rng.random((48, 64)) * 65535).astype(np.uint16)
    good("cats/sixteen_bit.png", _encoded(Image.fromarray(deep), "PNG"), (64, 48), "PNG")
    good("dogs/alpha.png", _encoded(Image.fromarray(pixels()).convert("RGBA"), "PNG"), (64, 48), "PNG")
    rotated = Image.fromarray(pixels())
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored 64x48, shown rotated 90 degrees: 48x64
    good("dogs/exif_rotated.jpg", _encoded(rotated, "JPEG", exif=exif.tobytes()), (48, 64), "JPEG")
    good("dogs/really_a_png.jpg", _encoded(Image.fromarray(pixels()), "PNG"), (64, 48), "PNG")
    good("dogs/scan.tiff", _encoded(Image.fromarray(pixels()), "TIFF"), (64, 48), "TIFF")
    good("dogs/bitmap.BMP", _encoded(Image.fromarray(pixels()), "BMP"), (64, 48), "BMP")
    good("dogs/web.webp", _encoded(Image.fromarray(pixels()), "WEBP"), (64, 48), "WEBP")
    # Problems: one file each.
    jpeg = _encoded(Image.fromarray(pixels()), "JPEG")
    problems = {
        "cats/empty.jpg": (b"", "empty"),
        "cats/notes_in_disguise.jpg": (b"this is a text file, not an image\n" * 20, "not_an_image"),
        "dogs/truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "dogs/damaged.png": (_damaged_png(pixels()), "corrupt"),
        "cats/thumbnail.png": (_encoded(Image.fromarray(pixels(8, 8)), "PNG"), "too_small"),
        "dogs/bomb.png": (_png_claiming_size(100_000, 100_000), "decompression_bomb"),
        "dogs/copy_of_cat.jpg": (files["cats/cats_000.jpg"], "duplicate"),
        "cats/dangling.jpg": (None, "unreadable"),
    }
    for rel, (data, kind) in problems.items():
        files[rel], expected[rel] = data, kind
    # Skipped, not errors.
    for rel, kind in {
        ".hidden.jpg": "hidden",
        "cats/.thumbs/small.jpg": "hidden",
        "README.txt": "not_an_image_extension",
        "dogs/labels.csv": "not_an_image_extension",
    }.items():
        files[rel], expected[rel] = jpeg if rel.endswith(".jpg") else b"some text\n", kind
    return Corpus(files, expected, sizes, formats)


@pytest.fixture
def corpus() -> Corpus:
    return make_corpus()


# --- a real GCS emulator (fake-gcs-server) ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from kubedistill.devtools.gcs_emulator import GcsEmulator

    with GcsEmulator(log_dir=tmp_path_factory.mktemp("gcs-emulator")) as url:
        yield url


@pytest.fixture
def gcs_bucket(_gcs_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """A fresh, empty bucket on the emulator (one server per test session); STORAGE_EMULATOR_HOST is set."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", _gcs_server)
    name = "b-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid()}"
    return storage.Client(project="test").create_bucket(name)
