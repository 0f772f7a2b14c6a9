"""Low-level URI helpers: copy one file from https://, http://, gs:// or a local path, with a checksum.

A copy is written to a temporary file next to its destination and renamed into place, so a reader never
sees a half-written file and an interrupted download leaves only a ``.part`` file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from kubedistill.errors import WeightsError

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("http", "https", "gs")
HTTP_TIMEOUT_S = 60.0  # per socket operation (connect or one read), not for the whole download
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_GCS_AUTH_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, "
    "or run `gcloud auth application-default login`"
)


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for http://, https:// and gs:// URIs; False for local paths and file:// URIs."""
    return urlparse(str(uri)).scheme.lower() in REMOTE_SCHEMES


def to_local_path(uri: str | os.PathLike[str]) -> Path:
    """A local path or ``file://`` URI as a Path (``~`` expanded)."""
    text = str(uri)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text).expanduser()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 digest of a file, read in 1 MiB chunks (constant memory for multi-GB checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_sha256(expected: str) -> str:
    """Lower-case hex digest; accepts an optional ``sha256:`` prefix. Raises WeightsError if malformed."""
    value = expected.strip().lower().removeprefix("sha256:")
    if not _SHA256_RE.fullmatch(value):
        raise WeightsError(f"sha256={expected!r} is not a sha256 digest: expected 64 hexadecimal characters.")
    return value


def verify_sha256(path: str | os.PathLike[str], expected: str, *, source: str | None = None) -> None:
    """Raise WeightsError naming the expected and the actual digest when ``path`` does not match."""
    wanted = normalize_sha256(expected)
    actual = sha256_file(path)
    if actual != wanted:
        raise WeightsError(
            f"sha256 mismatch for {source or path}: expected {wanted}, got {actual}. The file is corrupt, "
            "truncated or a different version; check the URI and the sha256 you passed."
        )


def fetch(
    uri: str, dest: str | os.PathLike[str], *, sha256: str | None = None, timeout_s: float = HTTP_TIMEOUT_S
) -> Path:
    """Copy ``uri`` (https://, http://, gs://, file:// or a local path) to ``dest`` atomically.

    ``sha256``, when given, is checked before the file is renamed into place: on a mismatch the temporary
    file is deleted and WeightsError names the expected and the actual digest. Returns ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if sha256 is not None:
        sha256 = normalize_sha256(sha256)  # fail before downloading gigabytes
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copier(uri)(uri, out, timeout_s)
            out.flush()
            os.fsync(out.fileno())  # the rename below must not publish a file whose data is still in flight
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache shared by several users must be readable
        if sha256 is not None:
            verify_sha256(tmp, sha256, source=uri)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("fetched %s -> %s (%d bytes)", uri, dest, dest.stat().st_size)
    return dest


def _copier(uri: str) -> Callable[[str, BinaryIO, float], None]:
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _copy_http
    if scheme == "gs":
        return _copy_gcs
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive, still a local path
        return _copy_local
    raise WeightsError(
        f"Unsupported URI scheme {scheme!r} in {uri!r}: use https://, gs://, file:// or a path."
    )


def _copy_local(uri: str, out: BinaryIO, timeout_s: float) -> None:
    path = to_local_path(uri)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file: check the path.")
    with open(path, "rb") as src:
        shutil.copyfileobj(src, out, _CHUNK)


def _copy_http(url: str, out: BinaryIO, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "kubedistill"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            expected = response.headers.get("Content-Length")
            shutil.copyfileobj(response, out, _CHUNK)
    except urllib.error.HTTPError as e:
        raise WeightsError(f"Downloading {url} failed: HTTP {e.code} {e.reason}. Check the URL.") from e
    # Network failures only: an OSError from writing (a full disk) must not be blamed on the network.
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(
            f"Cannot download {url}: {reason}. Check the URL and the network; on a machine without internet "
            "access, copy the file there and pass its local path or a gs:// URI instead."
        ) from e
    if expected is not None and out.tell() != int(expected):  # a dropped connection can look like an EOF
        raise WeightsError(f"Download of {url} was cut short: {out.tell()} of {expected} bytes. Try again.")


def split_gs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/path/to/object`` -> (``bucket``, ``path/to/object``)."""
    parsed = urlparse(uri)
    name = parsed.path.lstrip("/")
    if parsed.scheme != "gs" or not parsed.netloc or not name:
        raise WeightsError(f"{uri!r} is not a gs:// object URI: expected gs://BUCKET/PATH/TO/OBJECT.")
    return parsed.netloc, name


def _copy_gcs(uri: str, out: BinaryIO, timeout_s: float) -> None:
    try:  # imported here: only gs:// users pay for (or need) the Google client libraries
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
        from google.cloud import storage
    except ImportError as e:
        raise WeightsError(
            f"Reading {uri} needs google-cloud-storage: pip install google-cloud-storage"
        ) from e
    bucket, name = split_gs_uri(uri)
    try:
        _gcs_client(storage).bucket(bucket).blob(name).download_to_file(out, timeout=timeout_s)
    except auth_exc.DefaultCredentialsError as e:
        raise WeightsError(f"No Google Cloud credentials to read {uri}: {_GCS_AUTH_HINT}.") from e
    except gexc.NotFound as e:
        raise WeightsError(
            f"{uri} not found: the bucket {bucket!r} or the object {name!r} does not exist."
        ) from e
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        raise WeightsError(
            f"Access to {uri} denied ({e.code}): grant the credentials in use read access "
            f"(roles/storage.objectViewer) or {_GCS_AUTH_HINT} with an account that has it."
        ) from e
    except gexc.GoogleAPIError as e:
        raise WeightsError(f"Reading {uri} failed: {e}") from e


def _gcs_client(storage: ModuleType):  # -> google.cloud.storage.Client
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client()  # the client points itself at the emulator and uses anonymous credentials
    import google.auth

    # Reading an object needs no project; asking the client to infer one fails for many user logins.
    credentials, project = google.auth.default()
    return storage.Client(project=project or "<none>", credentials=credentials)
