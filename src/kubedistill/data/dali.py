"""The GPU data path: NVIDIA DALI decodes (nvJPEG) and augments on the GPU, in place of the torch DataLoader.

``DaliLoader`` is a drop-in for ``make_dataloader``'s loader: it owns the same ``ShardedEpochSampler`` (as
``.sampler``), ``len()`` is the batches per epoch, and iterating yields ``{"image", "index", "failures"}``
batches like ``collate``'s, with the images already on the training device.

Same augmentation choices as the torch path. DALI's random generators are not used: every random choice of
a view is drawn by ``DistillationTransform.sample`` on the host, seeded from (seed, epoch, index) exactly as
``ImageDataset`` does, from the image's size read from its header (no pixel decoded), and handed to the
pipeline as per-sample inputs. So the same keys give the same crop boxes, flips and jitter factors as the
torch path, and a run resumed with ``sampler.set_epoch(epoch, start)`` sees exactly the batches an
uninterrupted run would (skipped items are not read at all).

Where the pixels differ from the torch path (tests/data/test_dali.py measures it):

- Resize: both are bilinear with antialiasing (a triangle filter widened by the scale factor). torchvision
  crops first, so its filter stops at the crop's edge; DALI resizes a region of the whole image, so at the
  crop's edge the filter also reads the pixels just outside it. Flips are folded into the resize (the region
  is read backwards), which is exact.
- Colour jitter keeps each view's random order and torchvision's definitions (contrast blends with the
  image's mean luma, not DALI's mid-grey; hue shifts the HSV hue, not DALI's YIQ rotation; grayscale and
  saturation use torchvision's luma weights). DALI has no per-sample op order, so the four ops of a view are
  folded on the host into the coefficients of one formula (``_jitter_terms``), exact for every order, and the
  pipeline evaluates that formula with the same ops for every view. The one difference: torch clips to
  [0, 255] after each op, the formula clips once at the end, so pixels pushed out of range by one op and
  back by a later one (brightness 1.4, then contrast 0.6) come out brighter or darker here.
- Precision: torch rounds to uint8 after every op; DALI keeps float32 from the resize to the normalization.
- Rotation (bilinear, black fill, counter-clockwise), blur (reflected border) and solarize have the same
  definitions.

Unreadable files are substituted as in ``ImageDataset`` (the same candidates, in the same order, reported
in ``failures`` with the same reasons; ``DataError`` after ``max_retries``), at this cost:

- a file that cannot be read, is empty, is not an image, or whose header is over ``max_pixels`` is caught on
  the host while its header is read, before DALI sees it: no cost beyond the header read every file gets;
- a file with a good header and corrupt data makes DALI fail the whole batch. Only then is that batch read
  again and decoded with ``kubedistill.data.images.decode_image`` on the CPU (the torch path's decoder, so
  the same files are rejected), and the decoded pixels go through a second pipeline with the same
  augmentations: one CPU decode per image of that batch (~3 ms for a 500x375 JPEG) and a pipeline rebuild
  (~30 ms), once per such batch. Good batches pay nothing extra. A file DALI cannot decode but ours can (e.g. a CMYK JPEG) takes the same
  path and is used, not substituted.

DALI is an optional dependency (``pip install kubedistill[gpu]``): this module imports it only when a
loader is built, and ``dali_available()`` says whether it can be.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from kubedistill.data.datasets import ImageDataset
from kubedistill.data.images import (
    _EXIF_ORIENTATION_TAG,
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    _check_size,
    _known_warnings_silenced,
    _open_header,
    decode_image,
)
from kubedistill.data.remote import ImageReader
from kubedistill.data.samplers import SampleKey, ShardedEpochSampler
from kubedistill.data.transforms import (
    DistillationTransform,
    DistillationTransformArgs,
    GaussianBlurArgs,
    ViewParams,
    _blur_is_identity,
    _kernel_size_for_sigma,
)
from kubedistill.errors import ConfigError

__all__ = ["BACKENDS", "DaliLoader", "dali_available", "oriented_size", "resolve_backend"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install kubedistill[gpu]"

# torchvision's luma weights (rgb_to_grayscale, and the mean that adjust_contrast blends with).
_LUMA = (0.2989, 0.587, 0.114)
# loader_args.backend: who decodes and augments the training images.
BACKENDS = ("auto", "torch", "dali")
# EXIF orientations that swap width and height (the transposes and the 90/270 degree rotations).
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_TIFF_WIDTH_TAG, _TIFF_LENGTH_TAG = 256, 257
# Solarize threshold of a view that is not solarized: above every pixel value.
_NEVER = 1e9


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here (``loader_args.backend=auto`` picks it on CUDA when so)."""
    try:
        _import_dali()
    except ConfigError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """The loader for ``loader_args.backend``, "torch" or "dali": "auto" is DALI when training on CUDA and
    DALI is installed (on the CPU the torch DataLoader is the faster one per core: BENCHMARKS.md)."""
    if backend not in BACKENDS:
        raise ConfigError([f"loader_args.backend: {backend!r} is not one of {list(BACKENDS)}"])
    if backend == "auto":
        return "dali" if device.type == "cuda" and dali_available() else "torch"
    if backend == "dali":
        _import_dali()  # fails now, with the install hint, rather than when the loader is built
    return backend


def _import_dali() -> SimpleNamespace:
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
        from nvidia.dali.pipeline import Pipeline
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except (ImportError, OSError) as e:  # OSError: installed, but its CUDA libraries cannot be loaded
        raise ConfigError(
            [
                f"loader_args.backend: 'dali' needs NVIDIA DALI, which cannot be imported here ({e}); "
                f"install it with `{INSTALL_HINT}`, or set loader_args.backend=torch"
            ]
        ) from e
    return SimpleNamespace(fn=fn, math=dmath, types=types, Pipeline=Pipeline, feed_ndarray=feed_ndarray)


# --- reading ------------------------------------------------------------------------------------------------


def oriented_size(
    data: bytes, *, source: str = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int]:
    """(height, width) of an encoded image once its EXIF orientation is applied, from the header alone.

    Raises ImageDecodeError for what ``decode_image`` rejects before decoding (empty, not an image, an
    unreadable header, more than ``max_pixels``), with the same reasons.
    """
    if len(data) == 0:
        raise ImageDecodeError(source, "the file is empty (0 bytes)", "empty")
    fast = _jpeg_oriented_size(data)
    if fast is not None and 0 < fast[0] * fast[1] <= max_pixels:
        return fast
    return _pil_oriented_size(data, source=source, max_pixels=max_pixels)


def _pil_oriented_size(data: bytes, *, source: str, max_pixels: int) -> tuple[int, int]:
    """``oriented_size`` by PIL: every format, and every error with its reason."""
    with _known_warnings_silenced():
        header = _open_header(data, source)
        _check_size(header, source, max_pixels)
        try:
            orientation = header.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except Exception:  # malformed EXIF: the decoders ignore it too
            orientation = 1
    width, height = header.size
    transposed = orientation in _TRANSPOSING_ORIENTATIONS and not _size_already_oriented(header)
    return (width, height) if transposed else (height, width)


# JPEG start-of-frame markers that PIL and nvJPEG both read: baseline, extended sequential, progressive.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


def _jpeg_oriented_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation from a JPEG's markers, a few us instead of PIL's ~45 (the DALI
    loader reads every image's header in the training process). Walks the segments up to the first scan, as PIL
    does, so an EXIF block after the frame header counts too. None for anything else or anything unusual (XMP,
    which PIL also reads an orientation from; frame types other than baseline/extended/progressive; a
    malformed segment): PIL then decides, with its own error reasons."""
    if not data.startswith(b"\xff\xd8"):
        return None
    orientation, size, exif_seen = 1, None, False
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # the first scan: the header is complete
            if size is None:
                return None
            height, width = size
            return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            return None
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            if not exif_seen:  # PIL keeps the first
                exif_seen = True
                found = _exif_orientation(segment[6:])
                if found is None:
                    return None
                orientation = found
        elif marker == 0xE1 and segment.startswith(b"http://ns.adobe.com/xap/1.0/"):
            return None
        elif marker in _JPEG_SOF:
            if size is not None or length < 8 or segment[5] not in (1, 3, 4):  # gray, YCbCr/RGB, CMYK
                return None
            size = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # another frame type: PIL's call
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of an EXIF block's first IFD (1 when absent); None when the block is malformed."""
    if tiff[:4] == b"II*\x00":
        order = "little"
    elif tiff[:4] == b"MM\x00*":
        order = "big"
    else:
        return None
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == _EXIF_ORIENTATION_TAG:
            if int.from_bytes(tiff[entry + 2 : entry + 4], order) != 3:  # not a SHORT: let PIL read it
                return None
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else None
    return 1


def _size_already_oriented(header: Any) -> bool:
    """Pillow (>= 11) reports a TIFF's size after its orientation; other formats' sizes are as stored."""
    if header.format != "TIFF":
        return False
    stored = (header.tag_v2.get(_TIFF_WIDTH_TAG), header.tag_v2.get(_TIFF_LENGTH_TAG))
    return tuple(header.size) != stored


@dataclass(frozen=True)
class _Encoded:
    """An image's file content and its size after EXIF orientation (what the random crop is drawn for)."""

    data: bytes
    height: int
    width: int


class _SampleSource:
    """``ImageDataset``'s loader here: a file -> its header size (or, on the fallback path, its pixels).

    Going through ImageDataset keeps one definition of substitutes, per-sample seeds, failure reasons and the
    give-up error for both paths. Reads of the next batch are started ahead in threads (``prefetched``).
    """

    def __init__(self, read_bytes: Callable[[str], bytes], max_pixels: int):
        self.read_bytes = read_bytes
        self.max_pixels = max_pixels
        self.decode = False  # True: decode on the CPU with our decoder (a batch DALI could not decode)
        self.prefetched: dict[str, Future[bytes]] = {}

    def __call__(self, path: str) -> _Encoded | torch.Tensor:
        future = self.prefetched.pop(path, None)
        data = future.result() if future is not None else self.read_bytes(path)
        if self.decode:
            return decode_image(data, source=path, max_pixels=self.max_pixels)
        return _Encoded(data, *oriented_size(data, source=path, max_pixels=self.max_pixels))


class _DrawParams:
    """``ImageDataset``'s transform here: draws the view's random choices (under the per-sample seed that
    ImageDataset sets) for the image's size, and leaves the pixels to DALI."""

    def __init__(self, transform: DistillationTransform):
        self.transform = transform

    def __call__(self, image: _Encoded | torch.Tensor) -> tuple[_Encoded | torch.Tensor, ViewParams]:
        if isinstance(image, _Encoded):
            return image, self.transform.sample(image.height, image.width)
        return image, self.transform.sample(image.shape[-2], image.shape[-1])


# --- the loader ---------------------------------------------------------------------------------------------


class DaliLoader:
    """Batches of augmented images decoded by DALI, on ``device``: the DataLoader of ``make_dataloader``, for
    ``loader_args.backend=dali``.

    Args:
        files: image URIs (local paths or gs://), as for ``ImageDataset``.
        transform: the augmentation; its ``sample`` draws every random choice, DALI applies them.
        batch_size: images per batch on this device.
        seed: base of the sampler's permutation and of the per-sample augmentation seeds.
        rank, world_size: this process's shard of each epoch, as ``make_dataloader``'s.
        device: cuda:N decodes JPEGs with nvJPEG and augments on that GPU (batches stay there); cpu runs
            DALI's CPU operators (tests, and machines without a GPU).
        num_threads: DALI's CPU threads (decoding on the CPU, and nvJPEG's host-side Huffman decoding).
        read_bytes: URI -> file content; default ``ImageReader().read_bytes`` (give it the staging cache
            folder: ``ImageReader(cache_dir).read_bytes``).
        max_retries: substitutes tried after a failure before ``DataError``.
        max_pixels: larger images are rejected from their header, as ``decode_image`` does.
        io_threads: threads that read the next batch's files while the current one is processed (a gs://
            stream needs several to hide the bucket's latency).
        drop_last: drop the last, incomplete batch of an epoch (the trainer always does).
        keep_params: add each batch's ``ViewParams`` as "params" (tests compare them with the torch path).

    Iterating yields dicts: "image" float32 (B, 3, *image_size) on ``device``, normalized; "index" int64 (B,)
    of the files actually used (a substitute's after a failure); "failures" a list of (path, reason).
    """

    def __init__(
        self,
        files: Sequence[str],
        transform: DistillationTransform,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        num_threads: int = 2,
        read_bytes: Callable[[str], bytes] | None = None,
        max_retries: int = 16,
        max_pixels: int = MAX_IMAGE_PIXELS,
        io_threads: int = 8,
        drop_last: bool = True,
        keep_params: bool = False,
    ):
        if (
            batch_size <= 0
            or num_threads <= 0
            or io_threads <= 0
            or world_size <= 0
            or not 0 <= rank < world_size
        ):
            raise ValueError(
                f"DaliLoader: need batch_size, num_threads, io_threads > 0 and 0 <= rank < world_size; got "
                f"batch_size={batch_size}, num_threads={num_threads}, io_threads={io_threads}, rank={rank}, "
                f"world_size={world_size}"
            )
        self._dali = _import_dali()
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DaliLoader runs on a CUDA device or on the CPU, not on {self.device}")
        self.transform = transform
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.drop_last = drop_last
        self.keep_params = keep_params
        self._source = _SampleSource(read_bytes or ImageReader().read_bytes, max_pixels)
        self._dataset = ImageDataset(
            files, _DrawParams(transform), max_retries=max_retries, loader=self._source, seed=seed
        )
        self.sampler = ShardedEpochSampler(
            len(files), rank=rank, world_size=world_size, seed=seed, shuffle=True
        )
        self._io_threads = io_threads
        self._pool: ThreadPoolExecutor | None = None
        self._pipelines: dict[bool, _Pipeline] = {}  # encoded input (the normal path), decoded (the fallback)

    def __len__(self) -> int:
        """Batches per epoch (the full epoch, whatever ``sampler.start`` is), as a DataLoader counts them."""
        items = len(self.sampler)
        return items // self.batch_size if self.drop_last else math.ceil(items / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keys = list(self.sampler)
        batches = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        if batches and self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        ahead = self._read_ahead(batches[0]) if batches else {}
        for i, batch in enumerate(batches):
            reads, ahead = ahead, (self._read_ahead(batches[i + 1]) if i + 1 < len(batches) else {})
            yield self._load_batch(batch, reads)

    def _read_ahead(self, keys: list[SampleKey]) -> dict[str, Future[bytes]]:
        """Start reading the batch's files (the first candidate of each; substitutes are read when needed)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._io_threads, thread_name_prefix="dali-read")
        paths = [self._dataset.files[index] for _, index in keys]
        return {path: self._pool.submit(self._source.read_bytes, path) for path in paths}

    def _load_batch(self, keys: list[SampleKey], reads: dict[str, Future[bytes]]) -> dict[str, Any]:
        self._source.prefetched = reads
        samples = [self._dataset[key] for key in keys]
        try:
            images = self._pipeline(encoded=True).run(samples)
        except RuntimeError as e:  # DALI fails the whole batch when one file cannot be decoded
            logger.info(
                "DALI could not decode a file of this batch (%s); decoding the batch on the CPU",
                _first_line(e),
            )
            # DALI has long called a pipeline that raised "no longer valid"; 2.4's CPU one still works, but a
            # rebuild (~30 ms, on the next batch) is cheap insurance for the GPU one.
            self._pipelines.pop(True, None)
            samples = self._decoded_on_cpu(keys)
            images = self._pipeline(encoded=False).run(samples)
        batch: dict[str, Any] = {
            "image": images,
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "failures": [f for s in samples for f in s["failures"]],
        }
        if self.keep_params:
            batch["params"] = [s["image"][1] for s in samples]
        return batch

    def _decoded_on_cpu(self, keys: list[SampleKey]) -> list[Any]:
        self._source.prefetched = {}
        self._source.decode = True
        try:
            return [self._dataset[key] for key in keys]
        finally:
            self._source.decode = False

    def _pipeline(self, *, encoded: bool) -> _Pipeline:
        if encoded not in self._pipelines:
            self._pipelines[encoded] = _Pipeline(
                self._dali,
                self.transform.args,
                encoded=encoded,
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                device=self.device,
                seed=self._dataset.seed,
            )
        return self._pipelines[encoded]

    def close(self) -> None:
        """Stop the read threads (idle ones cost nothing; a test or a benchmark may build many loaders)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pipelines.clear()


# --- the pipeline -------------------------------------------------------------------------------------------


class _Pipeline:
    """One DALI pipeline: encoded files (or decoded pixels) plus per-sample view parameters -> a float batch.

    Order as in ``DistillationTransform.apply``: crop + resize (+ flips) -> rotation -> colour jitter and
    grayscale -> blur -> solarize -> normalize (CHW). Ops that the arguments make impossible are left out.
    """

    def __init__(
        self,
        dali: SimpleNamespace,
        args: DistillationTransformArgs,
        *,
        encoded: bool,
        batch_size: int,
        num_threads: int,
        device: torch.device,
        seed: int,
    ):
        self.dali = dali
        self.args = args
        self.encoded = encoded
        self.device = device
        self.on_gpu = device.type == "cuda"
        device_id = (
            (device.index if device.index is not None else torch.cuda.current_device())
            if self.on_gpu
            else None
        )
        self.pipe = dali.Pipeline(
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=1,
            seed=seed,  # DALI's own random generators are not used; every random choice is an input
        )
        self.inputs: list[str] = []
        with self.pipe:
            self.pipe.set_outputs(self._graph())
        self.pipe.build()

    def _input(self, name: str, dtype: Any = None, ndim: int = 0) -> Any:
        """A per-sample input (one array per sample, fed by ``run``)."""
        self.inputs.append(name)
        return self.dali.fn.external_source(name=name, dtype=dtype or self.dali.types.FLOAT, ndim=ndim)

    def _on_device(self, node: Any) -> Any:
        return node.gpu() if self.on_gpu else node

    def _graph(self) -> Any:
        fn, types, a = self.dali.fn, self.dali.types, self.args
        if self.encoded:
            # "mixed": nvJPEG on the GPU for JPEG, DALI's CPU decoders for the other formats. Fancy upsampling
            # makes nvJPEG's chroma match libjpeg-turbo's (the CPU decoder's, and torchvision's).
            images = fn.decoders.image(
                self._input("encoded", types.UINT8, 1),
                device="mixed" if self.on_gpu else "cpu",
                output_type=types.RGB,
                adjust_orientation=True,
                jpeg_fancy_upsampling=True,
            )
        else:
            images = self._on_device(
                fn.external_source(name="pixels", dtype=types.UINT8, ndim=3, layout="HWC")
            )
            self.inputs.append("pixels")
        # A region start after its end reads it backwards: the flips cost nothing.
        x = fn.resize(
            images,
            size=list(a.image_size),
            roi_start=self._input("roi_start", ndim=1),
            roi_end=self._input("roi_end", ndim=1),
            interp_type=types.INTERP_LINEAR,
            antialias=True,
            dtype=types.FLOAT,
        )
        if a.random_rotation is not None and a.random_rotation.prob > 0:
            x = fn.rotate(
                x, angle=self._input("angle"), keep_size=True, fill_value=0.0, interp_type=types.INTERP_LINEAR
            )
        jitter = _possible_jitter(a)
        if jitter:
            x = self._colour_jitter(x, hue="hue" in jitter)
        if a.random_gray_scale > 0:
            x = x + self._scalar("grayscale") * (self._luma(x) - x)  # grayscale: 1 or 0
        if _blur_can_change_pixels(a.gaussian_blur):
            x = fn.gaussian_blur(
                x, window_size=self._input("blur_window", types.INT32), sigma=self._input("blur_sigma")
            )
        if a.solarize is not None and a.solarize.prob > 0:
            threshold = self._on_device(self._input("solarize_threshold"))
            x = x + (x >= threshold) * (255.0 - 2.0 * x)
        mean = [255.0 * m for m in a.normalize.mean]
        std = [255.0 * s for s in a.normalize.std]
        return fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)

    def _scalar(self, name: str) -> Any:
        """A per-sample number used in arithmetic with the image (so it must sit on the image's device)."""
        return self._on_device(self._input(name))

    def _luma(self, x: Any) -> Any:
        """(H, W, 1) luma of an (H, W, 3) float image, with torchvision's weights."""
        weights = self.dali.types.Constant(np.float32(_LUMA))
        return self.dali.fn.reductions.sum(x * weights, axes=[2], keep_dims=True)

    def _colour_jitter(self, x: Any, *, hue: bool) -> Any:
        """torchvision's colour jitter, in each view's own order, as one formula (see ``_jitter_terms``):
        p * H(x) + u * Y(x) + v * Y(H(x)) + w0 * mean Y(x) + w1 * mean Y(H(x)), clipped to [0, 255]."""
        mean = self.dali.fn.reductions.mean
        luma = self._luma(x)
        if hue:
            hued = self._hue_shift(x, self._scalar("hue"))
            hued_luma = self._luma(hued)
        else:
            hued, hued_luma = x, luma
        p, u, v, w0, w1 = (self._scalar(f"jitter_{name}") for name in ("p", "u", "v", "w0", "w1"))
        out = p * hued + u * luma + v * hued_luma + w0 * mean(luma) + w1 * mean(hued_luma)
        return self.dali.math.clamp(out, 0.0, 255.0)

    def _hue_shift(self, x: Any, turn: Any) -> Any:
        """torchvision's adjust_hue: the HSV hue moved by ``turn`` (a fraction of a full turn), with the HSV
        value (max channel) and chroma (max - min) kept. DALI's own hue op rotates YIQ chroma instead."""
        dmath = self.dali.math
        r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
        high = dmath.max(r, dmath.max(g, b))
        chroma = high - dmath.min(r, dmath.min(g, b))
        safe = chroma + (chroma == 0)  # a grey pixel has no hue; any value does (torchvision's 0)
        red_max, green_max = high == r, (high == g) & (high != r)
        blue_max = (high != g) & (high != r)
        sixths = (
            red_max * ((g - b) / safe)
            + green_max * (2.0 + (b - r) / safe)
            + blue_max * (4.0 + (r - g) / safe)
        )
        sixths = sixths + 6.0 * turn + 12.0  # positive: sixths >= -1 and turn >= -0.5
        channels = []
        for offset in (5.0, 3.0, 1.0):  # R, G, B from hue, value and chroma (the HSV -> RGB formula)
            k = sixths + offset
            k = k - 6.0 * dmath.floor(k / 6.0)
            channels.append(high - chroma * dmath.clamp(dmath.min(k, 4.0 - k), 0.0, 1.0))
        return self.dali.fn.stack(*channels, axis=2, axis_name="C")

    def run(self, samples: list[Any]) -> torch.Tensor:
        """``ImageDataset`` samples (image, params) -> float32 (B, 3, *image_size) on the device."""
        feeds = self._feeds(samples)
        if self.on_gpu:
            stream = torch.cuda.current_stream(self.device)
            (output,) = self.pipe.run(stream, **feeds)  # on torch's stream: no host synchronisation
        else:
            stream = None
            (output,) = self.pipe.run(**feeds)
        batch = torch.empty((len(samples), 3, *self.args.image_size), dtype=torch.float32, device=self.device)
        self.dali.feed_ndarray(output.as_tensor(), batch, cuda_stream=stream)  # device to device on CUDA
        return batch

    def _feeds(self, samples: list[Any]) -> dict[str, list[np.ndarray]]:
        columns: dict[str, list[np.ndarray]] = {name: [] for name in self.inputs}
        for sample in samples:
            image, params = sample["image"]
            values = _view_inputs(params, self.args)
            if self.encoded:
                values["encoded"] = np.frombuffer(image.data, dtype=np.uint8)
            else:
                values["pixels"] = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
            for name in self.inputs:
                columns[name].append(values[name])
        return columns


def _possible_jitter(args: DistillationTransformArgs) -> set[str]:
    """The jitter ops some view may draw (the others are left out of the pipeline)."""
    cj = args.color_jitter
    if cj.prob <= 0:
        return set()
    return {
        name
        for name in ("brightness", "contrast", "saturation", "hue")
        if getattr(cj, name) * cj.strength > 0
    }


def _blur_can_change_pixels(args: GaussianBlurArgs) -> bool:
    """Whether some drawn blur can change a pixel. The strongest has the largest sigma and kernel; with the
    default sigmas (at most 0.1) none can, and the blur is left out of the pipeline."""
    sigma = args.sigmas[1]
    if args.prob <= 0 or sigma <= 0:
        return False
    ksize = _kernel_size_for_sigma(sigma) if args.blur_limit == 0 else args.blur_limit
    return ksize > 1 and not _blur_is_identity(ksize, sigma)


def _view_inputs(params: ViewParams, args: DistillationTransformArgs) -> dict[str, np.ndarray]:
    """The pipeline's per-sample inputs for one view; identity values for the ops the view does not use."""
    top, left, height, width = params.crop
    y0, y1 = (top + height, top) if params.vertical_flip else (top, top + height)
    x0, x1 = (left + width, left) if params.horizontal_flip else (left, left + width)
    blur_window, blur_sigma = params.blur if params.blur is not None else (1, 0.0)
    threshold = args.solarize.threshold * 255.0 if params.solarize and args.solarize is not None else _NEVER
    values = {
        "roi_start": (y0, x0),
        "roi_end": (y1, x1),
        "angle": params.rotation or 0.0,
        "hue": dict(params.jitter).get("hue", 0.0),
        **{f"jitter_{name}": value for name, value in _jitter_terms(params.jitter).items()},
        "grayscale": float(params.grayscale),
        "blur_sigma": blur_sigma,
        "solarize_threshold": threshold,
    }
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in values.items()}
    arrays["blur_window"] = np.asarray(blur_window, dtype=np.int32)
    return arrays


def _jitter_terms(jitter: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """torchvision's colour jitter ops, applied in the view's order, as the coefficients of one formula.

    Each op keeps the image of the form p * X + G: X the (hue-shifted, once hue has run) input, G a grey map
    made of the lumas Y and their means. Brightness scales both; saturation blends with the pixel's luma
    (p * Y(X) + G); contrast blends with the mean luma; the hue shift moves X to H(x) and leaves grey alone.
    So the result is exactly torchvision's for any order, except that torch clips to [0, 255] (and rounds to
    uint8) after each op and this clips once, at the end.

    Returns p, u, v, w0, w1 of p * X + u * Y(x) + v * Y(H(x)) + w0 * mean Y(x) + w1 * mean Y(H(x)).
    """
    p, u, v, w0, w1, hued = 1.0, 0.0, 0.0, 0.0, 0.0, False
    for name, factor in jitter:
        if name == "brightness":
            p, u, v, w0, w1 = (factor * t for t in (p, u, v, w0, w1))
        elif name == "saturation":
            u, v = (u, v + (1 - factor) * p) if hued else (u + (1 - factor) * p, v)
            p *= factor
        elif name == "contrast":
            mean_x, mean_hx = u + w0 + (0.0 if hued else p), v + w1 + (p if hued else 0.0)
            p, u, v = factor * p, factor * u, factor * v
            w0, w1 = factor * w0 + (1 - factor) * mean_x, factor * w1 + (1 - factor) * mean_hx
        else:  # hue
            hued = True
    return {"p": p, "u": u, "v": v, "w0": w0, "w1": w1}


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
